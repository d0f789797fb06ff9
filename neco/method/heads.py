"""Projection head applied to patch tokens before the NeCo loss (method.md §4).

Official: Linear(D->2048) -> GELU -> Linear(2048->2048) -> GELU -> Linear(2048->256), then L2
normalisation over d; no BatchNorm, no weight-norm. Weights trunc-normal with std 0.02, biases 0
(the bias init is unverified; DINO's head uses the same rule).

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """MLP ``Linear-GELU-...-Linear`` followed by L2 normalisation over the last axis.

    Args:
        in_dim: backbone width D.
        hidden_dim: hidden width (official 2048); unused when ``n_layers == 1``.
        out_dim: projection dimension d (official 256).
        n_layers: number of Linear layers (official 3), >= 1.
        generator: generator for the weight init; None = torch's global RNG (seed it first).
            Student and teacher heads drawn from one generator (or the global RNG) in turn are
            independent, as officially (``teacher_head_init: independent``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        n_layers: int,
        *,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim, n_layers) < 1:
            raise ValueError(
                f"ProjectionHead: in_dim={in_dim}, train.head.hidden_dim={hidden_dim}, "
                f"train.head.out_dim={out_dim}, train.head.n_layers={n_layers}: all must be >= 1"
            )
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            linear = nn.Linear(dims[i], dims[i + 1])
            nn.init.trunc_normal_(linear.weight, std=0.02, generator=generator)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and normalise tokens.

        Args:
            x: ``(..., D)``, e.g. patch tokens ``(B, N, D)``.

        Returns:
            ``(..., d)`` with unit L2 norm over d.
        """
        return F.normalize(self.mlp(x), dim=-1)
