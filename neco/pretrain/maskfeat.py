"""Masked HOG prediction (MaskFeat, Wei et al. 2022, https://arxiv.org/abs/2112.09133).

Written from the paper. A random subset of the patch tokens is replaced by a learnt mask token
after the patch embedding (SimMIM/BEiT-style, the encoder sees every position); a linear head on
the final-norm tokens regresses the Histograms of Oriented Gradients (Dalal & Triggs 2005) of
the masked patches, the loss being the mean squared error over masked patches only.

HOG here (per the paper: no block normalisation, a per-patch L2 normalisation): grey-level
gradients with the ``[-1, 0, 1]`` filters, unsigned orientation in ``[0, pi)`` split into
``bins`` bins with linear interpolation between the two nearest bin centres, magnitude-weighted
sums over ``cell x cell`` pixel cells; the ``(p/cell)^2 * bins`` histograms of a patch are
concatenated and divided by ``sqrt(|h|^2 + eps^2)``. The ``eps`` floor (in the same units as
the histograms, grey levels in [0, 1]) keeps a flat, noise-only patch small instead of
amplifying its noise to unit norm, so "textured vs smooth" stays in the target.

The target needs no teacher and no bootstrapping: it cannot collapse, and it encodes exactly the
local cue that separates this dataset's textures (one orientation for stripes, two for checker,
weak for the smooth background), while colour, which the generator makes uninformative, is not
in it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neco.models.vit import Backbone

_GRAY = torch.tensor([0.299, 0.587, 0.114])


def hog_targets(
    images: torch.Tensor, *, patch: int, cell: int, bins: int, eps: float
) -> torch.Tensor:
    """Per-patch HOG ``(B, N, (patch/cell)^2 * bins)`` of ``(B, 3, H, W)`` images in [0, 1].

    Patches are row-major (the ViT's token order); ``H`` and ``W`` must be multiples of
    ``patch`` and ``patch`` of ``cell``.
    """
    b, _, h, w = images.shape
    if h % patch or w % patch or patch % cell:
        raise ValueError(f"hog_targets: {h}x{w} px, patch {patch}, cell {cell} do not tile")
    g = (images * _GRAY.to(images.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    g = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = g[:, :, 1:-1, 2:] - g[:, :, 1:-1, :-2]
    gy = g[:, :, 2:, 1:-1] - g[:, :, :-2, 1:-1]
    mag = torch.sqrt(gx * gx + gy * gy)
    theta = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned, [0, pi)
    pos = theta / math.pi * bins - 0.5  # bin centres at (i + 0.5) * pi / bins
    lo = torch.floor(pos)
    frac = pos - lo
    lo_i = torch.remainder(lo, bins).long()
    hi_i = torch.remainder(lo + 1, bins).long()
    hist = torch.zeros(b, bins, h, w, dtype=images.dtype)
    hist.scatter_add_(1, lo_i, mag * (1 - frac))
    hist.scatter_add_(1, hi_i, mag * frac)
    cells = F.avg_pool2d(hist, cell) * (cell * cell)  # (B, bins, H/cell, W/cell) sums
    per = patch // cell
    gh, gw = h // patch, w // patch
    cells = cells.view(b, bins, gh, per, gw, per).permute(0, 2, 4, 3, 5, 1)
    feats = cells.reshape(b, gh * gw, per * per * bins)
    return feats / torch.sqrt((feats * feats).sum(-1, keepdim=True) + eps * eps)


def standardise(target: torch.Tensor) -> torch.Tensor:
    """Each feature of ``(B, N, F)`` to zero mean, unit variance over the batch's patches.

    MAE's normalised-pixel targets per feature: the raw HOG varies by ~0.07 per feature, so an
    unnormalised MSE is dominated by fitting the output scale and stays at the mean-prediction
    floor for the first hundreds of steps (measured); standardised it starts learning at once.
    """
    mean = target.mean(dim=(0, 1), keepdim=True)
    std = target.std(dim=(0, 1), keepdim=True)
    return (target - mean) / (std + 1e-6)


def random_token_mask(b: int, n: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """``(B, N)`` bool, exactly ``round(ratio * N)`` (at least 1) True per row, uniformly."""
    k = max(1, int(round(ratio * n)))
    order = torch.rand(b, n, generator=gen).argsort(dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


def masked_tokens(
    backbone: Backbone, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """Final-norm patch tokens ``(B, N, D)`` with the masked positions' embeddings replaced.

    timm's ``forward_features`` with one extra step after the patch embedding: tokens where
    ``mask`` is True become ``mask_token`` (``(D,)``) before the position embedding is added.
    """
    vit = backbone.vit
    tok = vit.patch_embed(x)  # (B, gh, gw, D) with dynamic_img_size
    b, gh, gw, d = tok.shape
    m = mask.view(b, gh, gw, 1).to(tok.dtype)
    tok = tok * (1 - m) + mask_token.view(1, 1, 1, d).to(tok.dtype) * m
    y = vit._pos_embed(tok)
    y = vit.patch_drop(y)
    y = vit.norm_pre(y)
    y = vit.blocks(y)
    y = vit.norm(y)
    out: torch.Tensor = y[:, backbone.num_prefix_tokens :]
    return out


class MaskedHogHead(torch.nn.Module):
    """The learnt mask token and the linear HOG regressor of MaskFeat."""

    def __init__(self, dim: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.mask_token = torch.nn.Parameter(torch.empty(dim))
        torch.nn.init.trunc_normal_(self.mask_token, std=0.02, generator=generator)
        self.linear = torch.nn.Linear(dim, out_dim)
        torch.nn.init.trunc_normal_(self.linear.weight, std=0.02, generator=generator)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., out_dim)`` predicted HOG."""
        out: torch.Tensor = self.linear(tokens)
        return out


def masked_hog_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, visible_weight: float = 0.0
) -> tuple[torch.Tensor, float]:
    """MSE over the masked patches and the loss of predicting their mean HOG (the floor a
    model with no information reaches), for a scale-free "fraction of variance left".

    Args:
        pred, target: ``(B, N, F)``.
        mask: ``(B, N)`` bool, True = masked (scored).
        visible_weight: weight of the same MSE on the visible patches (0 = MaskFeat).
    """
    p, t = pred[mask], target[mask]
    loss = ((p - t) ** 2).sum(-1).mean()
    if visible_weight > 0:
        loss = loss + visible_weight * ((pred[~mask] - target[~mask]) ** 2).sum(-1).mean()
    with torch.no_grad():
        base = float(((t - t.mean(0, keepdim=True)) ** 2).sum(-1).mean())
    return loss, base
