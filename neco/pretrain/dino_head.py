"""DINO projection head: MLP, L2-normalised bottleneck, weight-normalised prototypes.

Caron et al. 2021, https://arxiv.org/abs/2104.14294 (official code:
https://github.com/facebookresearch/dino). The prototypes are a linear layer whose weight rows
are L2-normalised and whose gain is fixed to 1 (the paper's ``norm_last_layer``), so a logit is
the cosine between the bottleneck and a prototype; the temperatures set the sharpness.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neco.method.heads import ProjectionHead


class DinoHead(nn.Module):
    """``(..., D) -> (..., K)`` prototype cosines.

    Args:
        in_dim: backbone width D.
        hidden_dim: MLP hidden width.
        bottleneck_dim: width before the prototypes.
        n_layers: Linear layers of the MLP (>= 1; GELU between them).
        num_prototypes: K.
        generator: weight-init generator (trunc-normal std 0.02, zero bias).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        n_layers: int,
        num_prototypes: int,
        *,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, bottleneck_dim, n_layers, num_prototypes) < 1:
            raise ValueError("DinoHead: every dimension and n_layers must be >= 1")
        # NeCo's head (trunc-normal 0.02, zero bias, GELU, L2-normalised output) is DINO's MLP
        self.proj = ProjectionHead(in_dim, hidden_dim, bottleneck_dim, n_layers,
                                   generator=generator)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02, generator=generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm bottleneck ``(..., bottleneck_dim)`` of tokens ``(..., D)``."""
        return self.proj(x)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine logits ``(..., K)`` of tokens ``(..., D)``."""
        return self.embed(x) @ F.normalize(self.prototypes, dim=-1).t()
