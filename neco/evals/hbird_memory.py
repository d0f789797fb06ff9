"""Hummingbird memory: low-shot subsets, augmented views -> unit keys and patch soft labels.

evaluation.md §4.2-§4.3. For each of E augmentation epochs and every memory image: colour jitter,
normalise, paired RandomResizedCrop to S² (scale (0.5, 2.0) with torchvision's centre fallback),
tokens from the live extractor, per-patch class histograms of the cropped mask, then either every
patch is stored or ``K_img`` patches per view chosen by the per-view rarity rule.

Memory features are always extracted live: every epoch draws new augmentations, so they cannot
be cached. The random stream of view ``(epoch, image index)`` comes from a generator derived from
``(seed, run seed, epoch, image index)``: reproducible with any worker count, not bitwise equal to
the reference's global-RNG stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch

from neco.config.evals import ImageStd, JitterConfig, LabelStorage, MemoryIgnore
from neco.data.types import SegDataset
from neco.evals.extract import check_sample, chunks, iterate_batches, run_extractor
from neco.evals.extractor import FeatureExtractor
from neco.evals.hbird_query import unit_rows
from neco.evals.transforms import (
    as_tensor,
    color_jitter,
    crop_resize_image,
    crop_resize_mask,
    derived_generator,
    random_resized_crop_params,
    to_normalised,
)

if TYPE_CHECKING:
    from neco.config.evals import HbirdConfig

# fraction label -> {subset seed: memory ids} (the Hummingbird low-shot file sets)
Subsets = Mapping[str, Mapping[int, Sequence[str]]]


def parse_fraction(label: str) -> Fraction:
    """``"1/8"`` -> ``Fraction(1, 8)``; raises unless 0 < f ≤ 1."""
    try:
        value = Fraction(label)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"hbird.fractions: {label!r} is not a fraction like '1/8'") from exc
    if not 0 < value <= 1:
        raise ValueError(f"hbird.fractions: {label!r} must be in (0, 1]")
    return value


def derived_subset(ids: Sequence[str], fraction: Fraction, seed: int) -> list[str]:
    """Seeded subset when no file set exists: sorted ids, ``PCG64(seed)`` permutation, the first
    ``max(1, ceil(N · fraction))``; returned sorted."""
    ordered = sorted(ids)
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(ordered))
    n = max(1, math.ceil(len(ordered) * fraction))
    return sorted(ordered[i] for i in perm[:n])


def memory_indices(
    ds: SegDataset, label: str, seed: int, subsets: Subsets | None
) -> tuple[list[int], bool]:
    """Dataset indices of the memory of ``(fraction label, seed)`` and whether they were derived."""
    fraction = parse_fraction(label)
    if fraction == 1:
        return list(range(len(ds))), False
    given = (subsets or {}).get(label, {}).get(seed)
    chosen = derived_subset(ds.ids, fraction, seed) if given is None else list(given)
    position = {sid: i for i, sid in enumerate(ds.ids)}
    missing = [sid for sid in chosen if sid not in position]
    if missing or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"hbird subset {label} seed {seed}: ids must be unique members of the memory split; "
            f"unknown: {missing[:5]}"
        )
    return sorted(position[sid] for sid in chosen), given is None


@dataclass(frozen=True)
class MemoryBank:
    """Keys, labels and bookkeeping of one memory.

    Attributes:
        keys: float32 ``(R, D)`` unit rows.
        labels: ``(R, C)`` float32 soft labels or int16 pixel counts.
        per_view_k: ``K_img`` or ``"all"``.
        n_views: augmented views processed (N_mem · E).
    """

    keys: torch.Tensor
    labels: torch.Tensor
    per_view_k: int | str
    n_views: int


def patches_per_view(
    memory_size: int | None, n_images: int, epochs: int, n_patches: int
) -> int | None:
    """``K_img`` of §4.3 step 4, or None when every patch is stored.

    Store all when ``memory_size`` is None or ``⌊M / (N_mem·E)⌋ ≥ P`` (project rule; the reference
    crashes there), else ``max(1, ⌊M / (N_mem·E)⌋)``.
    """
    if memory_size is None:
        return None
    per_view = memory_size // (n_images * epochs)
    return None if per_view >= n_patches else max(1, per_view)


def patch_histograms(
    masks: torch.Tensor,
    *,
    patch: int,
    num_classes: int,
    ignore_index: int,
    memory_ignore: MemoryIgnore,
) -> torch.Tensor:
    """Per-patch class pixel counts of ``(B, S, S)`` masks, int64 ``(B, s*s, C)``.

    Patches are the ``p × p`` blocks aligned with the token grid, row-major. ``to_class0`` counts
    ι pixels as class 0; ``drop`` leaves them out.
    """
    b, size, _ = masks.shape
    grid = size // patch
    m = masks.long()
    if memory_ignore is MemoryIgnore.to_class0:
        m = torch.where(m == ignore_index, torch.zeros_like(m), m)
        valid = torch.ones_like(m, dtype=torch.bool)
    else:
        valid = m != ignore_index
    bad = valid & ((m < 0) | (m >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"memory mask holds ids outside [0, {num_classes}) other than ignore {ignore_index}: "
            f"{sorted(set(m[bad].tolist()))[:10]}"
        )
    cell = torch.arange(size, device=m.device) // patch
    pid = cell[:, None] * grid + cell[None, :]
    key = (torch.arange(b, device=m.device)[:, None, None] * grid * grid + pid) * num_classes + m
    counts = torch.bincount(key[valid], minlength=b * grid * grid * num_classes)
    return counts.view(b, grid * grid, num_classes)


def select_patches(
    counts: torch.Tensor, u: torch.Tensor, k_img: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches to store: all labelled ones, or the ``k_img`` rarest per view (§4.3 step 5).

    score_j = u_j · Σ_{c present in j} f_c, with f_c the number of the view's patches containing c
    and u_j ~ U[0, 1); a patch without a labelled pixel scores +∞ and is never stored.

    Args:
        counts: int ``(B, P, C)`` pixel counts.
        u: float32 ``(B, P)`` uniform draws of each view.
        k_img: patches per view, None = all.

    Returns:
        int64 view indices and patch indices of the stored rows (same length).
    """
    labelled = counts.sum(-1) > 0
    if k_img is None:
        views, patches = labelled.nonzero(as_tuple=True)
        return views, patches
    present = counts > 0
    freq = present.sum(1, keepdim=True)
    score = (present * freq).sum(-1).float() * u
    score = score.masked_fill(~labelled, float("inf"))
    idx = score.topk(k_img, dim=1, largest=False).indices
    keep = labelled.gather(1, idx)
    views = torch.arange(counts.shape[0], device=counts.device)[:, None].expand_as(idx)
    return views[keep], idx[keep]


@dataclass(frozen=True)
class MemoryView:
    """Augmented view ``(epoch, index)``: jitter, normalise, paired crop; plus the rarity draws."""

    ds: SegDataset
    input_size: int
    n_patches: int
    jitter: JitterConfig
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    image_std: ImageStd
    seed: int
    run_seed: int

    def __call__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, index = key
        sample = self.ds[index]
        check_sample(sample.image, sample.mask, sample.id)
        g = derived_generator(self.seed, "hbird-memory", self.run_seed, epoch, index)
        image = as_tensor(sample.image).permute(2, 0, 1).contiguous()
        x = to_normalised(color_jitter(image, self.jitter, g), self.image_std)
        height, width = sample.mask.shape
        box = random_resized_crop_params(height, width, self.crop_scale, self.crop_ratio, g)
        x = crop_resize_image(x, box, self.input_size)
        mask = crop_resize_mask(as_tensor(sample.mask), box, self.input_size)
        return x, mask, torch.rand(self.n_patches, generator=g)


def build_memory(
    extractor: FeatureExtractor,
    ds: SegDataset,
    indices: list[int],
    cfg: HbirdConfig,
    *,
    device: torch.device,
    seed: int,
    run_seed: int,
    batch_size: int,
    num_workers: int,
) -> MemoryBank:
    """Build the key/label bank of memory images ``indices`` of ``ds`` (evaluation.md §4.3).

    Args:
        extractor: live frozen extractor.
        ds: memory split.
        indices: dataset indices of the memory (sub)set.
        cfg: Hummingbird settings.
        device: extractor and bank device.
        seed: protocol seed; with ``run_seed`` it keys every view's generator.
        run_seed: the low-shot subset seed of this run.
        batch_size: images per extractor forward (speed only).
        num_workers: loader workers (speed only).

    Returns:
        The :class:`MemoryBank`; rows ≤ N_mem · E · (K_img or P).
    """
    patch = extractor.patch_size
    grid = cfg.input_size // patch
    n_patches = grid * grid
    k_img = patches_per_view(cfg.memory_size, len(indices), cfg.augmentation_epochs, n_patches)
    n_views = len(indices) * cfg.augmentation_epochs
    rows = n_views * (n_patches if k_img is None else k_img)
    label_dtype = torch.float32 if cfg.label_storage is LabelStorage.float32 else torch.int16
    keys = torch.empty(rows, extractor.embed_dim, device=device)
    labels = torch.empty(rows, ds.num_classes, dtype=label_dtype, device=device)
    item = MemoryView(
        ds,
        cfg.input_size,
        n_patches,
        cfg.jitter,
        (cfg.crop_scale[0], cfg.crop_scale[1]),
        (cfg.crop_ratio[0], cfg.crop_ratio[1]),
        cfg.image_std,
        seed,
        run_seed,
    )
    keys_order = [(e, i) for e in range(cfg.augmentation_epochs) for i in indices]
    filled = 0
    for images, masks, u in iterate_batches(
        item, chunks(keys_order, batch_size, drop_last=False), num_workers=num_workers
    ):
        tokens = run_extractor(extractor, images, autocast=cfg.autocast, device=device)
        counts = patch_histograms(
            masks.to(device),
            patch=patch,
            num_classes=ds.num_classes,
            ignore_index=ds.ignore_index,
            memory_ignore=cfg.memory_ignore,
        )
        views, patches = select_patches(counts, u.to(device), k_img)
        t = tokens[views, patches]
        c = counts[views, patches]
        n = t.shape[0]
        keys[filled : filled + n] = unit_rows(t)
        if label_dtype == torch.float32:
            labels[filled : filled + n] = c.float() / c.sum(-1, keepdim=True).float()
        else:
            labels[filled : filled + n] = c.to(torch.int16)
        filled += n
    if filled == 0:
        raise ValueError("hbird memory is empty: no memory patch has a labelled pixel")
    return MemoryBank(keys[:filled], labels[:filled], "all" if k_img is None else k_img, n_views)
