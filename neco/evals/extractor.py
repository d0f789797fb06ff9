"""Feature sources for the eval protocols (evaluation.md §1.1).

A feature extractor maps normalised images ``(B, 3, S, S)`` (S divisible by the patch size)
to float32 patch tokens ``(B, (S/p)**2, D)`` of the last block after the final norm, in
row-major token order, with CLS and register tokens dropped. It runs the backbone in
``eval()`` mode under ``no_grad`` itself, so protocols can call it without care.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class FeatureExtractor(Protocol):
    """Callable ``(B, 3, S, S) -> (B, s*s, D)`` with its patch size and width."""

    patch_size: int
    embed_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...
