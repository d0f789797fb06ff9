"""Training data (``neco.train.datamodule``): samples, manifest checks, batches (method.md §3)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from neco.method.augment import PhotometricParams, make_views
from neco.method.manifest import ManifestIndex
from neco.train.datamodule import MultiCropDataset, NeCoDataModule
from tests.fixtures.tiny_training import TinySetup, build_tiny

torch.set_num_threads(1)

PARAMS = PhotometricParams(jitter_strength=1.0, blur_strength=1.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return build_tiny(tmp_path_factory.mktemp("tiny_dm"))


@pytest.fixture(scope="module")
def manifest(tiny: TinySetup) -> ManifestIndex:
    return ManifestIndex.from_path(tiny.manifest)


class ReorderedImages:
    """An ``ImageDataset`` look-alike serving the same files in another order."""

    def __init__(self, images: Any, order: list[int]) -> None:
        self._images, self._order = images, order
        self.ids = [images.ids[i] for i in order]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Any:
        return self._images.load(self._order[index])


def test_sample_shapes_and_boxes(tiny: TinySetup, manifest: ManifestIndex) -> None:
    """(views, gc, all): C views, gc (A, C, 4) in g's frame, all (C, A, 4) in v's frame."""
    images = tiny.images()
    ds = MultiCropDataset(images, manifest, epoch=1, params=PARAMS, seed=11)
    assert len(ds) == 12
    views, gc, all_ = ds[5]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    assert gc.shape == (2, 6, 4) and all_.shape == (6, 2, 4)
    assert gc.dtype == torch.float32 and all_.dtype == torch.float32
    rects, sizes, gc_ref, all_ref = manifest.get(1, 5)
    torch.testing.assert_close(gc, torch.tensor(gc_ref, dtype=torch.float32))
    torch.testing.assert_close(all_, torch.tensor(all_ref, dtype=torch.float32))
    for g in range(2):  # v = g: the full crop in its own frame (both layouts)
        torch.testing.assert_close(gc[g, g], torch.tensor([0.0, 0.0, 32.0, 32.0]))
        torch.testing.assert_close(all_[g, g], torch.tensor([0.0, 0.0, 32.0, 32.0]))
    side = torch.tensor([32.0, 32, 16, 16, 16, 16])
    assert (gc >= 0).all() and (gc <= 32).all()
    assert (all_ >= 0).all() and (all_ <= side.view(6, 1, 1)).all()
    # every local crop overlaps both globals (the sampler's constraint): non-empty boxes
    assert ((all_[..., 2] > all_[..., 0]) & (all_[..., 3] > all_[..., 1])).all()
    # views: this image cut with the manifest's geometry, augmented for (seed, epoch, index)
    ref = make_views(images.load(5), rects, sizes, params=PARAMS, seed=11, epoch=1, index=5)
    for v, r in zip(views, ref, strict=True):
        assert torch.equal(v, r)


def test_manifest_split_mismatch_raises(tiny: TinySetup, manifest: ManifestIndex) -> None:
    images = tiny.images()
    reordered = ReorderedImages(images, list(range(len(images)))[::-1])
    with pytest.raises(ValueError, match=r"crop manifest does not match the training split.*crops"):
        MultiCropDataset(reordered, manifest, epoch=0, params=PARAMS, seed=0)
    fewer = ReorderedImages(images, list(range(8)))
    with pytest.raises(ValueError, match=r"12 manifest ids vs 8 split ids"):
        MultiCropDataset(fewer, manifest, epoch=0, params=PARAMS, seed=0)


@pytest.mark.parametrize("epoch", [-1, 2, 10])
def test_epoch_outside_manifest_raises(
    tiny: TinySetup, manifest: ManifestIndex, epoch: int
) -> None:
    match = rf"epoch {epoch} is outside the crop manifest \(2 epochs\)"
    with pytest.raises(ValueError, match=match):
        MultiCropDataset(tiny.images(), manifest, epoch=epoch, params=PARAMS, seed=0)


def _datamodule(tiny: TinySetup, *, batch: int, seed: int) -> NeCoDataModule:
    return NeCoDataModule(
        tiny.images(), tiny.manifest, global_batch_size=batch, params=PARAMS, seed=seed,
        num_workers=0,
    )


def fake_trainer(epoch: int, world: int, rank: int) -> Any:
    """What the data module reads from its trainer."""
    return SimpleNamespace(current_epoch=epoch, world_size=world, global_rank=rank)


def _order(dm: NeCoDataModule, *, epoch: int, world: int = 1, rank: int = 0) -> list[int]:
    dm.trainer = fake_trainer(epoch, world, rank)
    return list(dm.train_dataloader().sampler)  # type: ignore[arg-type]


def test_loader_drops_last_partial_batch(tiny: TinySetup) -> None:
    dm = _datamodule(tiny, batch=5, seed=3)
    dm.trainer = fake_trainer(0, 1, 0)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == dm.steps_per_epoch() == 2  # 12 // 5
    for views, gc, all_ in batches:
        assert len(views) == 6 and all(v.shape[0] == 5 for v in views)
        assert gc.shape == (5, 2, 6, 4) and all_.shape == (5, 6, 2, 4)
    # the batch holds the samples the sampler lists, in that order
    order = list(loader.sampler)  # type: ignore[arg-type]
    ds = loader.dataset
    expected_gc = torch.stack([ds[i][1] for i in order[:5]])
    torch.testing.assert_close(batches[0][1], expected_gc)


def test_shuffle_is_deterministic_per_seed_and_epoch(tiny: TinySetup) -> None:
    dm = _datamodule(tiny, batch=4, seed=3)
    e0, e1 = _order(dm, epoch=0), _order(dm, epoch=1)
    assert sorted(e0) == list(range(12)) and sorted(e1) == list(range(12))
    assert e0 == _order(_datamodule(tiny, batch=4, seed=3), epoch=0)  # a fresh data module
    assert e0 != e1
    assert e0 != _order(_datamodule(tiny, batch=4, seed=4), epoch=0)
    assert e0 != list(range(12))  # shuffled at all


def test_ranks_split_the_global_batch(tiny: TinySetup) -> None:
    """DDP: disjoint per-rank shards, per-device batch = global / world, same step count."""
    dm = _datamodule(tiny, batch=4, seed=3)
    shards = [_order(dm, epoch=1, world=2, rank=r) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(12))
    dm.trainer = fake_trainer(1, 2, 1)
    loader = dm.train_dataloader()
    assert loader.batch_size == 2 and len(loader) == dm.steps_per_epoch() == 3


def test_batch_size_errors(tiny: TinySetup) -> None:
    with pytest.raises(ValueError, match=r"train.batch_size=13 exceeds the 12 training images"):
        _datamodule(tiny, batch=13, seed=0).steps_per_epoch()
    with pytest.raises(ValueError, match=r"train.batch_size=5 is not divisible by 2 devices"):
        _datamodule(tiny, batch=5, seed=0).per_device_batch(2)


def test_manifest_path_missing(tmp_path: Path, tiny: TinySetup) -> None:
    with pytest.raises(Exception, match=r"crop manifest not found"):
        NeCoDataModule(tiny.images(), tmp_path / "none.parquet", global_batch_size=4,
                       params=PARAMS, seed=0, num_workers=0)


def test_samples_independent_of_access_order(tiny: TinySetup, manifest: ManifestIndex) -> None:
    """Random access (any worker layout) gives the same sample."""
    ds = MultiCropDataset(tiny.images(), manifest, epoch=0, params=PARAMS, seed=2)
    first = ds[3][0]
    for i in (7, 0, 11):
        ds[i]
    again = ds[3][0]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert np.isfinite(torch.cat([v.flatten() for v in first]).numpy()).all()
