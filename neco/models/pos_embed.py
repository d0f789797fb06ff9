"""Position-embedding resampling for ViTs at non-native input sizes (method.md §4, §16 #16).

A ViT's absolute position embedding is learnt on a native ``M0 x M1`` token grid (37 x 37
for DINOv2 at 518 px, 14 x 14 for DINO at 224 px). Any other input size needs a resampled
grid, and the three implementations in circulation give *different features*
(evaluation.md §1.2):

* ``official``: DINOv2 ``DinoVisionTransformer.interpolate_pos_encoding`` as used by the
  DINOv2 hub models *without* registers, NeCo's ``src/models/vit_v2.py`` and DINO v1's
  ``interpolate_pos_encoding``: bicubic, ``scale_factor = ((g + 0.1) / M0, (g' + 0.1) / M1)``
  (``interpolate_offset = 0.1``), ``antialias=False``. With a scale factor, torch maps
  output pixel ``i`` to the source coordinate ``(i + 0.5) * M / (g + 0.1) - 0.5``, so the
  offset shifts the sampling grid slightly; the output size is ``floor(g + 0.1) = g``.
* ``hub_reg``: the DINOv2 hub ``*_reg`` models (``interpolate_offset=0.0``,
  ``interpolate_antialias=True``): bicubic to ``size = (g, g')``, antialias on.
* ``timm``: ``timm.layers.resample_abs_pos_embed`` as called by timm's
  ``VisionTransformer._pos_embed`` with ``dynamic_img_size=True``. (In timm 1.0.31 this is
  bicubic to ``size`` with antialias on, i.e. numerically the same as ``hub_reg``; it is
  kept separate because it follows whatever the installed timm does.)

All three return the native embedding unchanged when the grid equals the native grid (as
DINOv2 does). Only the *patch* part of the embedding is resampled; a class-token position
embedding, if any, is never interpolated.

References: DINOv2 (arXiv 2304.07193, github.com/facebookresearch/dinov2,
``dinov2/models/vision_transformer.py``); DINO (arXiv 2104.14294, ``vision_transformer.py``).
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F


class PosEmbedInterp(str, enum.Enum):
    """How patch position embeddings are resampled to a non-native token grid."""

    OFFICIAL = "official"
    HUB_REG = "hub_reg"
    TIMM = "timm"


#: DINOv2/DINO ``interpolate_offset`` of the ``official`` rule (a "historical kludge" against
#: floating-point error in the output size, kept for fidelity).
OFFICIAL_OFFSET = 0.1


def parse_pos_embed_interp(value: PosEmbedInterp | str) -> PosEmbedInterp:
    """Accept an enum member or its string value; reject anything else with the valid values."""
    if isinstance(value, PosEmbedInterp):
        return value
    try:
        return PosEmbedInterp(value)
    except ValueError:
        valid = [m.value for m in PosEmbedInterp]
        raise ValueError(
            f"pos_embed_interp: invalid value {value!r}; expected one of {valid}"
        ) from None


def resample_patch_pos_embed(
    patch_pos_embed: torch.Tensor,
    *,
    native_grid: tuple[int, int],
    grid: tuple[int, int],
    mode: PosEmbedInterp | str,
) -> torch.Tensor:
    """Resample the patch part of an absolute position embedding to a new token grid.

    Args:
        patch_pos_embed: ``(1, M0 * M1, D)`` embedding of the native grid, row-major
            (no class-token entry).
        native_grid: ``(M0, M1)`` rows and columns of the native grid.
        grid: ``(g0, g1)`` rows and columns of the target grid (``H / p``, ``W / p``).
        mode: resampling rule, see the module docstring.

    Returns:
        ``(1, g0 * g1, D)`` in the input's dtype (interpolation runs in float32).
    """
    mode = parse_pos_embed_interp(mode)
    m0, m1 = native_grid
    g0, g1 = grid
    if patch_pos_embed.ndim != 3 or patch_pos_embed.shape[0] != 1:
        raise ValueError(
            f"patch_pos_embed: expected shape (1, N, D), got {tuple(patch_pos_embed.shape)}"
        )
    if patch_pos_embed.shape[1] != m0 * m1:
        raise ValueError(
            f"patch_pos_embed has {patch_pos_embed.shape[1]} positions; native_grid {native_grid} "
            f"needs {m0 * m1}"
        )
    if g0 < 1 or g1 < 1:
        raise ValueError(f"grid: expected positive sizes, got {grid}")
    if (g0, g1) == (m0, m1):
        return patch_pos_embed
    dim = patch_pos_embed.shape[-1]
    if mode is PosEmbedInterp.TIMM:
        from timm.layers.pos_embed import resample_abs_pos_embed

        out: torch.Tensor = resample_abs_pos_embed(
            patch_pos_embed, new_size=[g0, g1], old_size=[m0, m1], num_prefix_tokens=0
        )
        return out
    dtype = patch_pos_embed.dtype
    x = patch_pos_embed.float().reshape(1, m0, m1, dim).permute(0, 3, 1, 2)
    if mode is PosEmbedInterp.OFFICIAL:
        scale = ((g0 + OFFICIAL_OFFSET) / m0, (g1 + OFFICIAL_OFFSET) / m1)
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", antialias=False)
    else:  # HUB_REG
        x = F.interpolate(x, size=(g0, g1), mode="bicubic", antialias=True)
    if tuple(x.shape[-2:]) != (g0, g1):  # cannot happen for the offset 0.1; guards float edge cases
        raise RuntimeError(
            f"position-embedding resampling produced grid {tuple(x.shape[-2:])}, expected {grid}"
        )
    return x.permute(0, 2, 3, 1).reshape(1, g0 * g1, dim).to(dtype)
