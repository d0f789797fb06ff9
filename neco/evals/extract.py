"""Batched sample loading and frozen patch-token extraction shared by the eval protocols.

Every protocol maps dataset indices to transformed tensors with a picklable per-item callable
(randomness comes from generators derived from the item key, never from worker state), batches
them with an optional torch ``DataLoader`` (workers only change speed, never numbers), and feeds
a :class:`~neco.evals.extractor.FeatureExtractor`. :func:`extract_val_features` is the deterministic
val-split extraction whose output the pipeline's ``features`` stage caches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from neco.config.evals import Autocast, ImageStd, MaskResize
from neco.data.types import SegDataset
from neco.evals.extractor import FeatureExtractor
from neco.evals.transforms import (
    as_tensor,
    pil_resize_image,
    pil_resize_mask,
    to_normalised,
    torch_resize_mask,
)

K = TypeVar("K")


class _KeyedDataset(Dataset[Any]):
    def __init__(self, item: Callable[[Any], Any]) -> None:
        self.item = item

    def __getitem__(self, key: Any) -> Any:
        return self.item(key)

    def __len__(self) -> int:  # never used: batches come from an explicit batch sampler
        raise TypeError("keyed dataset has no length")


def iterate_batches(
    item: Callable[[Any], Any], batches: Sequence[list[Any]], *, num_workers: int
) -> Iterator[Any]:
    """Yield default-collated batches of ``item(key)`` for each list of keys in ``batches``.

    Args:
        item: picklable callable mapping one key (e.g. an index or ``(epoch, index)``) to a tuple
            of tensors/arrays; must be deterministic given the key.
        batches: key lists, in order.
        num_workers: DataLoader worker processes (0 = in-process).
    """
    loader = DataLoader(
        _KeyedDataset(item),
        batch_sampler=batches,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),  # its base-seed draw must not touch global RNG
    )
    yield from loader


def chunks(indices: Sequence[K], size: int, *, drop_last: bool) -> list[list[K]]:
    """Split ``indices`` into consecutive lists of ``size`` (the last one dropped if short)."""
    out = [list(indices[i : i + size]) for i in range(0, len(indices), size)]
    if drop_last and out and len(out[-1]) < size:
        out.pop()
    return out


def autocast_context(
    autocast: Autocast, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """fp16 autocast on CUDA for ``fp16_on_cuda``; no-op otherwise (CPU always runs fp32)."""
    if autocast is Autocast.fp16_on_cuda and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def run_extractor(
    extractor: FeatureExtractor, images: torch.Tensor, *, autocast: Autocast, device: torch.device
) -> torch.Tensor:
    """Patch tokens of normalised images, checked against the extractor contract.

    Args:
        extractor: the frozen feature extractor.
        images: float32 ``(B, 3, S, S)``.
        autocast: precision quirk.
        device: where the extractor runs.

    Returns:
        float32 ``(B, s*s, D)`` on ``device``, ``s = S / patch_size``.
    """
    size = images.shape[-1]
    if size % extractor.patch_size:
        raise ValueError(
            f"input size {size} is not divisible by the extractor patch size {extractor.patch_size}"
        )
    grid = size // extractor.patch_size
    with torch.no_grad(), autocast_context(autocast, device):
        tokens = extractor(images.to(device))
    expected = (images.shape[0], grid * grid, extractor.embed_dim)
    if tuple(tokens.shape) != expected:
        raise ValueError(
            f"feature extractor returned {tuple(tokens.shape)}, expected (B, s*s, D) = {expected}"
        )
    return tokens.float()


def check_sample(image: np.ndarray, mask: np.ndarray, sample_id: str) -> None:
    """Raise unless ``image`` is uint8 ``(H, W, 3)`` and ``mask`` uint8 ``(H, W)``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"sample {sample_id}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
        )
    if mask.shape != image.shape[:2] or mask.dtype != np.uint8:
        raise ValueError(
            f"sample {sample_id}: mask must be uint8 {image.shape[:2]}, "
            f"got {mask.dtype} {mask.shape}"
        )


@dataclass(frozen=True)
class ValMask:
    """Linear/clustering val GT: PIL NEAREST to S², then torch ``nearest`` to m² (§2.2, §3.1)."""

    ds: SegDataset
    input_size: int
    mask_size: int

    def __call__(self, index: int) -> torch.Tensor:
        sample = self.ds[index]
        check_sample(sample.image, sample.mask, sample.id)
        mask = as_tensor(pil_resize_mask(sample.mask, self.input_size))
        return torch_resize_mask(mask, self.mask_size, MaskResize.nearest)


def load_masks(
    item: Callable[[int], torch.Tensor], n: int, *, batch_size: int, num_workers: int
) -> torch.Tensor:
    """Stack ``item(i)`` for ``i < n``: uint8 ``(n, m, m)`` GT maps."""
    batches = chunks(range(n), batch_size, drop_last=False)
    return torch.cat(list(iterate_batches(item, batches, num_workers=num_workers)))


@dataclass(frozen=True)
class ValImage:
    """Val item: PIL-bilinear resize to S² and normalise (evaluation.md §2.2, §3.1, §4.2)."""

    ds: SegDataset
    input_size: int
    image_std: ImageStd

    def __call__(self, index: int) -> torch.Tensor:
        image = pil_resize_image(self.ds[index].image, self.input_size)
        return to_normalised(image, self.image_std)


def extract_val_features(
    extractor: FeatureExtractor,
    ds: SegDataset,
    *,
    input_size: int,
    image_std: ImageStd,
    batch_size: int,
    device: torch.device,
    autocast: Autocast,
    num_workers: int = 0,
) -> torch.Tensor:
    """Frozen patch tokens of every image of ``ds``, in dataset order.

    Images are PIL-bilinear resized to ``input_size``² (aspect distorted) and normalised with
    ImageNet mean and the std of ``image_std``. This is exactly the query/val transform of all
    three protocols, so the pipeline computes it once per (model, dataset, settings) and passes it
    as ``val_features`` / ``query_features``.

    Args:
        extractor: frozen extractor; it handles ``eval()`` and ``no_grad``.
        ds: the split.
        input_size: S.
        image_std: normalisation std (Hummingbird may use the reference typo).
        batch_size: images per forward.
        device: extractor device.
        autocast: fp16 autocast quirk (Hummingbird reference) or ``none``.
        num_workers: loader workers (speed only).

    Returns:
        float32 ``(N, s*s, D)`` on the CPU.
    """
    item = ValImage(ds, input_size, image_std)
    out = []
    for images in iterate_batches(
        item, chunks(range(len(ds)), batch_size, drop_last=False), num_workers=num_workers
    ):
        out.append(run_extractor(extractor, images, autocast=autocast, device=device).cpu())
    if not out:
        raise ValueError("extract_val_features: the dataset is empty")
    return torch.cat(out)
