"""NeCo training data: prepared images + crop manifest -> multi-crop batches.

Each sample is ``(views, gc, all)``:

* ``views``: list of C tensors ``(3, s_c, s_c)`` (2 global, then the local crops);
* ``gc``: ``(A, C, 4)`` intersection of global crop g with view v in **g's** frame (pixels);
* ``all``: ``(C, A, 4)`` the same intersection in **v's** frame (pixels),

as in method.md §3. The trainer divides the boxes by the patch size (token units).

With ``train.augment_device: accelerator`` the workers only decode: a sample is a
:class:`DecodedSample` (the ``uint8`` image, its manifest boxes and the photometric draws), the
loader collates a :class:`DecodedBatch`, and ``NeCoModule.on_after_batch_transfer`` cuts and
augments it on the device (:func:`neco.method.tensor_augment.augment_batch`) into the same
``(views, gc, all)``.

The epoch selects the manifest rows, so augmentation geometry is read, not drawn. The sampler
is a ``DistributedSampler`` in every case (one replica on a single device), shuffled with
``seed`` and the epoch, and drops the last incomplete batch so that the schedule length equals
the real number of optimiser steps (method.md §10).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from neco.method.augment import PhotometricParams, make_views
from neco.method.manifest import ManifestIndex
from neco.method.tensor_augment import AugmentDevice, ViewDraws, draw_views, stack_draws


def check_manifest(images: Any, manifest: ManifestIndex, epoch: int) -> None:
    """Raise unless ``manifest`` indexes exactly ``images`` and holds ``epoch``."""
    if list(manifest.image_ids) != list(images.ids):
        raise ValueError(
            "crop manifest does not match the training split: "
            f"{len(manifest.image_ids)} manifest ids vs {len(images.ids)} split ids; "
            "rerun the crops stage (`dvc repro crops`)"
        )
    if not 0 <= epoch < manifest.num_epochs:
        raise ValueError(
            f"epoch {epoch} is outside the crop manifest ({manifest.num_epochs} epochs); "
            "train.epochs and the manifest disagree — rerun the crops stage"
        )


def _boxes(gc: np.ndarray, all_: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.asarray(gc, np.float32)),
        torch.from_numpy(np.asarray(all_, np.float32)),
    )


class _EpochImages:
    """The images of one manifest epoch with what cutting them needs (shared by both datasets).

    Args:
        images: a ``neco.data.reader.ImageDataset`` (``load(i) -> PIL.Image``, ``ids``).
        manifest: the crop manifest index.
        epoch: manifest epoch to read.
        params: photometric strengths.
        seed: photometric seed.
    """

    def __init__(
        self,
        images: Any,
        manifest: ManifestIndex,
        *,
        epoch: int,
        params: PhotometricParams,
        seed: int,
    ) -> None:
        check_manifest(images, manifest, epoch)
        self.images = images
        self.manifest = manifest
        self.epoch = epoch
        self.params = params
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)


class MultiCropDataset(
    _EpochImages, Dataset[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]
):
    """Images of one epoch, cut with the manifest's boxes and augmented (:class:`_EpochImages`
    arguments)."""

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        rects, sizes, gc, all_ = self.manifest.get(self.epoch, index)
        img = self.images.load(index)
        views = make_views(
            img, rects, sizes, params=self.params, seed=self.seed, epoch=self.epoch, index=index
        )
        return (views, *_boxes(gc, all_))


class DecodedSample(NamedTuple):
    """One image for accelerator augmentation (``train.augment_device: accelerator``).

    Attributes:
        image: the decoded RGB image ``(3, H, W)`` uint8.
        rects: the manifest's crop boxes ``(C, 4)`` int64 ``(x, y, w, h)``, original pixels.
        sizes: output side per view ``(C,)`` int64.
        draws: the photometric parameters of the C views (``L = (C,)``).
        gc, all_: the overlap boxes ``(A, C, 4)`` and ``(C, A, 4)``, as in the CPU path.
    """

    image: torch.Tensor
    rects: np.ndarray
    sizes: np.ndarray
    draws: ViewDraws
    gc: torch.Tensor
    all_: torch.Tensor


class DecodedBatch(NamedTuple):
    """A collated batch of :class:`DecodedSample`: images stay a list (their sizes differ).

    Attributes:
        images: B images ``(3, H_b, W_b)`` uint8.
        rects: ``(B, C, 4)`` int64 (host numpy: the cut reads them without a device sync).
        sizes: ``(B, C)`` int64 (host numpy).
        draws: photometric parameters, ``L = (B, C)`` (host numpy).
        gc, all_: ``(B, A, C, 4)`` and ``(B, C, A, 4)`` float32 tensors.
    """

    images: list[torch.Tensor]
    rects: np.ndarray
    sizes: np.ndarray
    draws: ViewDraws
    gc: torch.Tensor
    all_: torch.Tensor


def collate_decoded(samples: list[DecodedSample]) -> DecodedBatch:
    """Stack :class:`DecodedSample` s into a :class:`DecodedBatch`."""
    return DecodedBatch(
        images=[s.image for s in samples],
        rects=np.stack([s.rects for s in samples]),
        sizes=np.stack([s.sizes for s in samples]),
        draws=stack_draws([s.draws for s in samples]),
        gc=torch.stack([s.gc for s in samples]),
        all_=torch.stack([s.all_ for s in samples]),
    )


class DecodedMultiCropDataset(_EpochImages, Dataset[DecodedSample]):
    """Images of one epoch, decoded, with their manifest boxes and photometric draws.

    The accelerator counterpart of :class:`MultiCropDataset` (same arguments): the worker
    decodes and draws the parameters from the CPU path's generators, the device cuts and
    augments.
    """

    def __getitem__(self, index: int) -> DecodedSample:
        rects, sizes, gc, all_ = self.manifest.get(self.epoch, index)
        pixels = np.array(self.images.load(index), dtype=np.uint8)  # (H, W, 3), writable
        draws = draw_views(
            self.params, seed=self.seed, epoch=self.epoch, index=index, num_views=len(rects)
        )
        return DecodedSample(
            torch.from_numpy(pixels).permute(2, 0, 1), rects.copy(), sizes.copy(), draws,
            *_boxes(gc, all_),
        )


class NeCoDataModule(pl.LightningDataModule):
    """Serves one manifest epoch per Lightning epoch (dataloaders reload every epoch).

    Args:
        images: the unlabelled training images (``ImageDataset``).
        manifest_path: the crops stage's Parquet manifest.
        global_batch_size: images per optimiser step over all devices.
        params: photometric strengths.
        seed: sampler and photometric seed.
        num_workers: DataLoader workers (results do not depend on it).
        world_size: training processes, ``train.devices x train.num_nodes``: checked here
            (the batch must split evenly) and against the Trainer's ``world_size``; None = take
            the Trainer's.
        augment_device: where views are augmented (``train.augment_device``); None = the
            attached module's ``augment_device`` (``NeCoModule`` reads it from its config), or
            the CPU path without one.
    """

    def __init__(
        self,
        images: Any,
        manifest_path: Path,
        *,
        global_batch_size: int,
        params: PhotometricParams,
        seed: int,
        num_workers: int,
        world_size: int | None = None,
        augment_device: AugmentDevice | None = None,
    ) -> None:
        super().__init__()
        self.augment_device = augment_device
        self.images = images
        self.manifest = ManifestIndex.from_path(manifest_path)
        self.global_batch_size = global_batch_size
        self.params = params
        self.seed = seed
        self.num_workers = num_workers
        self.world_size = world_size
        if world_size is not None:
            self.per_device_batch(world_size)  # fail before launching processes

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch with ``drop_last`` (``num_samples // global batch``).

        The same on any number of processes w = devices x nodes: each rank gets
        ``num_samples // w`` samples (``DistributedSampler(drop_last=True)``) in batches of
        ``global batch / w``, and ``(N // w) // (B / w) == N // B`` for integer ``B / w``.
        """
        steps = len(self.images) // self.global_batch_size
        if steps == 0:
            raise ValueError(
                f"train.batch_size={self.global_batch_size} exceeds the {len(self.images)} "
                "training images: not a single full batch per epoch"
            )
        return steps

    def per_device_batch(self, world_size: int) -> int:
        if self.global_batch_size % world_size:
            raise ValueError(
                f"train.batch_size={self.global_batch_size} is not divisible by "
                f"{world_size} devices (train.devices x train.num_nodes processes)"
            )
        return self.global_batch_size // world_size

    def train_dataloader(self) -> DataLoader[Any]:
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        world = trainer.world_size if trainer is not None else (self.world_size or 1)
        rank = trainer.global_rank if trainer is not None else 0
        if self.world_size is not None and world != self.world_size:
            raise ValueError(
                f"NeCoDataModule was built for {self.world_size} processes (train.devices x "
                f"train.num_nodes) but the Trainer runs {world}"
            )
        ds: Dataset[Any]
        collate: Any = None  # torch's default_collate
        if self.resolved_augment_device() is AugmentDevice.ACCELERATOR:
            ds = DecodedMultiCropDataset(
                self.images, self.manifest, epoch=epoch, params=self.params, seed=self.seed
            )
            collate = collate_decoded
        else:
            ds = MultiCropDataset(
                self.images, self.manifest, epoch=epoch, params=self.params, seed=self.seed
            )
        sampler: DistributedSampler[Any] = DistributedSampler(
            ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            ds,
            batch_size=self.per_device_batch(world),
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=True,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def resolved_augment_device(self) -> AugmentDevice:
        """The explicit ``augment_device``, else the attached module's, else the CPU path."""
        if self.augment_device is not None:
            return self.augment_device
        module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
        device = getattr(module, "augment_device", None)
        return device if isinstance(device, AugmentDevice) else AugmentDevice.CPU
