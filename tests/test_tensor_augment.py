"""Accelerator augmentation (``neco.method.tensor_augment``) against the CPU path (method.md §2).

Equivalence is checked at three levels:

* parameters: the tensor path's draws equal, call for call, what ``augment.photometric`` applies
  (a spy records its calls), and follow the spec's distributions (binomial, KS, chi-square);
* ops: each photometric op is **bit-exact** against Pillow on the same ``uint8`` input;
* views: the cut uses Pillow's fixed-point taps and every op rounds like Pillow, so a view whose
  crop is at least as wide as tall is **bit-identical** to the CPU path (tolerance 0). For some
  taller crops Pillow 13 runs the height pass first (an internal heuristic); the two orders
  differ by at most 1 level on about 20% of that view's pixels, and a level that differs can
  move a later truncation or hue sector. Tolerances: resize alone <= 1 level; full path, over
  all views, mean <= 0.15 level, 99.9th percentile <= 8 levels. (A float ``interpolate`` without
  Pillow's rounding was off by a level on ~20% of all pixels and by up to 10 levels.)
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from scipy import stats

import neco.method.augment as augment
from neco.config.method import CropConfig
from neco.method.augment import IMAGENET_STD, PhotometricParams, make_views, sample_rng
from neco.method.crops import crop_rng, sample_views
from neco.method.manifest import ManifestIndex
from neco.method.tensor_augment import (
    AugmentDevice,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_batch,
    box_blur,
    cut_view,
    draw_view,
    draw_views,
    luma,
    parse_augment_device,
    stack_draws,
)
from neco.models.recipes import resolve_train_config
from neco.train.datamodule import (
    DecodedBatch,
    DecodedMultiCropDataset,
    MultiCropDataset,
    NeCoDataModule,
    collate_decoded,
)
from neco.train.module import NeCoModule
from tests.fixtures.tiny_training import TinySetup, build_tiny

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # Lightning vs torch

OFFICIAL = PhotometricParams(jitter_strength=1.0, blur_strength=1.0)
NONE = PhotometricParams(jitter_strength=0.0, blur_strength=0.0)
CROPS = CropConfig(num_global=2, num_local=4, global_scale=[0.25, 1.0], local_scale=[0.05, 0.25],
                   ratio=[0.75, 4 / 3], min_intersection=0.01, second_global_factor=2.0,
                   max_retries=1000, global_size=None, local_size=None)


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour fields plus noise: saturated and grey regions, edges, every hue sector."""
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), int)
    return np.clip(smooth + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)


def levels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float()


def as_array(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy().astype(np.int64)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [photo_like(rng, 40, 52) for _ in range(5)] + [
        rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(2)
    ]


# ---- ops: bit-exact against Pillow ---------------------------------------------------------------
@pytest.mark.parametrize(("name", "pil", "ours", "lo", "hi"), [
    ("brightness", TF.adjust_brightness, adjust_brightness, 0.2, 1.8),
    ("contrast", TF.adjust_contrast, adjust_contrast, 0.2, 1.8),
    ("saturation", TF.adjust_saturation, adjust_saturation, 0.2, 1.8),
    ("hue", TF.adjust_hue, adjust_hue, -0.5, 0.5),
])
def test_jitter_ops_are_bit_exact(images: list[np.ndarray], name: str, pil: Any, ours: Any,
                                  lo: float, hi: float) -> None:
    factors = np.random.default_rng(len(name)).uniform(lo, hi, len(images))
    x = torch.stack([levels(a) for a in images])
    out = ours(x, torch.tensor(factors, dtype=torch.float32).view(-1, 1, 1, 1))
    for k, a in enumerate(images):
        ref = np.asarray(pil(Image.fromarray(a), float(factors[k])), np.int64)
        np.testing.assert_array_equal(as_array(out[k]), ref, err_msg=f"{name} {factors[k]}")


def test_grey_and_blur_are_bit_exact(images: list[np.ndarray]) -> None:
    x = torch.stack([levels(a) for a in images])
    grey = luma(x).expand(-1, 3, -1, -1)
    radii = [0.1, 0.37, 0.9, 1.3, 2.0, 3.7, 1e-3]
    blurred = box_blur(x, radii)
    for k, a in enumerate(images):
        img = Image.fromarray(a)
        np.testing.assert_array_equal(as_array(grey[k]),
                                      np.asarray(img.convert("L").convert("RGB"), np.int64))
        ref = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=radii[k])), np.int64)
        np.testing.assert_array_equal(as_array(blurred[k]), ref, err_msg=f"radius {radii[k]}")


# ---- geometry: the manifest's boxes --------------------------------------------------------------
def test_cut_takes_exactly_the_box() -> None:
    """At output size = box size the cut is the box's pixels; resizing agrees with Pillow."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image = torch.from_numpy(a).permute(2, 0, 1)
    for x, y, w, h in [(0, 0, 64, 48), (5, 7, 20, 20), (40, 20, 24, 28), (63, 47, 1, 1)]:
        if w == h:
            np.testing.assert_array_equal(as_array(cut_view(image, (x, y, w, h), w)),
                                          a[y : y + h, x : x + w])
        for size in (13, 37, 98):
            ref = np.asarray(augment.cut_crop(Image.fromarray(a), np.array([x, y, w, h]), size),
                             np.int64)
            diff = np.abs(as_array(cut_view(image, (x, y, w, h), size)) - ref)
            assert diff.max() <= (0 if w >= h else 1), ((x, y, w, h), size)


def test_decoded_samples_carry_the_manifest_boxes(tiny: TinySetup) -> None:
    manifest = ManifestIndex.from_path(tiny.manifest)
    ds = DecodedMultiCropDataset(tiny.images(), manifest, epoch=1, params=OFFICIAL, seed=5)
    cpu = MultiCropDataset(tiny.images(), manifest, epoch=1, params=OFFICIAL, seed=5)
    for i in (0, 7, 11):
        s = ds[i]
        rects, sizes, gc, all_ = manifest.get(1, i)
        np.testing.assert_array_equal(s.rects, rects)
        np.testing.assert_array_equal(s.sizes, sizes)
        _, gc_cpu, all_cpu = cpu[i]
        assert torch.equal(s.gc, gc_cpu) and torch.equal(s.all_, all_cpu)
        assert torch.equal(s.gc, torch.tensor(gc, dtype=torch.float32))
        np.testing.assert_array_equal(as_array(s.image), np.asarray(tiny.images().load(i)))


# ---- parameters: identical to the CPU path, the spec's distributions -----------------------------
class SpyImage:
    """Stands in for a PIL crop: records grey conversions and blur radii."""

    def __init__(self, log: list[tuple[str, float]]) -> None:
        self.log = log

    def convert(self, mode: str) -> SpyImage:
        if mode == "L":
            self.log.append(("gray", 0.0))
        return self

    def filter(self, f: ImageFilter.GaussianBlur) -> SpyImage:
        self.log.append(("blur", float(f.radius)))  # type: ignore[arg-type]
        return self


def draws_as_log(ops: np.ndarray, order: np.ndarray, factors: np.ndarray, gray: bool,
                 radius: float, blur_drawn: bool) -> list[tuple[str, float]]:
    names = ("brightness", "contrast", "saturation", "hue")
    log = [(names[op], float(factors[op])) for op in order if ops[op]]
    return log + [("gray", 0.0)] * gray + [("blur", radius)] * blur_drawn


@pytest.mark.parametrize("params", [OFFICIAL, NONE, PhotometricParams(0.5, 0.3),
                                    PhotometricParams(1.0, 0.0)])
def test_draws_equal_the_cpu_paths_calls(params: PhotometricParams,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[str, float]] = []

    def recorder(name: str) -> Any:
        return lambda img, f: (log.append((name, f)), img)[1]

    spy_tf = SimpleNamespace(**{f"adjust_{n}": recorder(n)
                                for n in ("brightness", "contrast", "saturation", "hue")})
    monkeypatch.setattr(augment, "TF", spy_tf)
    for view in range(600):
        log.clear()
        augment.photometric(SpyImage(log), params, sample_rng(1, 2, view // 6, view % 6))  # type: ignore[arg-type]
        ops, order, factors, gray, radius = draw_view(params, sample_rng(1, 2, view // 6, view % 6))
        blur_drawn = any(k == "blur" for k, _ in log)
        assert log == draws_as_log(ops, order, factors, gray, radius, blur_drawn), view
        assert blur_drawn == (radius > 0) or params.blur_strength == 0


def test_draw_distributions_follow_the_spec() -> None:
    """p = 0.8 / 0.2 / 0.5, factors U[0.2, 1.8], hue U[-0.2, 0.2], radius U[0.1, 2], any order."""
    d = stack_draws([draw_views(OFFICIAL, seed=3, epoch=e, index=i, num_views=6)
                     for e in range(2) for i in range(400)])
    n = d.gray.size  # 4800 views
    jitter = d.ops.any(-1).ravel()
    for flag, p in ((jitter, 0.8), (d.gray.ravel(), 0.2), ((d.radius > 0).ravel(), 0.5)):
        assert abs(flag.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    f = d.factors.reshape(-1, 4)[jitter]
    for k, (lo, width) in enumerate([(0.2, 1.6)] * 3 + [(-0.2, 0.4)]):
        assert stats.kstest(f[:, k], "uniform", args=(lo, width)).pvalue > 1e-3
    assert stats.kstest(d.radius[d.radius > 0], "uniform", args=(0.1, 1.9)).pvalue > 1e-3
    codes = d.order.reshape(-1, 4)[jitter] @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3


# ---- views: close to the CPU path, deterministic -------------------------------------------------
def level_diff(ours: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    return ((ours - ref) * std).abs().numpy()


@pytest.mark.parametrize("params", [OFFICIAL, NONE])
def test_views_match_the_cpu_path(params: PhotometricParams) -> None:
    rng = np.random.default_rng(11)
    b, sizes = 3, np.array([112, 112, 40, 40, 40, 40])
    pil = [Image.fromarray(photo_like(rng, 120, 160)) for _ in range(b)]
    rects = np.stack([sample_views(crop_rng(0, 0, i), width=160, height=120, cfg=CROPS,
                                   image_id=str(i), epoch=0) for i in range(b)])
    draws = stack_draws([draw_views(params, seed=9, epoch=0, index=i, num_views=6)
                         for i in range(b)])
    imgs = [torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pil]
    ours = augment_batch(imgs, rects, np.tile(sizes, (b, 1)), draws)
    assert [tuple(v.shape) for v in ours] == [(b, 3, 112, 112)] * 2 + [(b, 3, 40, 40)] * 4
    diffs = []
    for i in range(b):
        ref = make_views(pil[i], rects[i], sizes, params=params, seed=9, epoch=0, index=i)
        for v in range(6):
            diffs.append(level_diff(ours[v][i], ref[v]).ravel())
            if rects[i, v, 2] >= rects[i, v, 3]:  # Pillow's width-first order: identical
                assert torch.equal(ours[v][i], ref[v]), (i, v, rects[i, v])
    diff = np.concatenate(diffs)
    assert diff.max() <= (1.01 if params is NONE else 255)
    assert diff.mean() <= 0.15 and np.quantile(diff, 0.999) <= 8.01
    again = augment_batch(imgs, rects, np.tile(sizes, (b, 1)), draws)
    assert all(torch.equal(x, y) for x, y in zip(ours, again, strict=True))


def test_draws_are_deterministic_per_sample() -> None:
    a = draw_views(OFFICIAL, seed=1, epoch=3, index=17, num_views=6)
    b = draw_views(OFFICIAL, seed=1, epoch=3, index=17, num_views=6)
    c = draw_views(OFFICIAL, seed=2, epoch=3, index=17, num_views=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a.factors, c.factors)


def test_parse_augment_device() -> None:
    assert parse_augment_device("accelerator") is AugmentDevice.ACCELERATOR
    with pytest.raises(ValueError, match=r"augment_device=.gpu.: expected cpu \| accelerator"):
        parse_augment_device("gpu")


# ---- training wiring -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return build_tiny(tmp_path_factory.mktemp("tiny_tensor_aug"))


def make_module(tiny: TinySetup, device: str) -> NeCoModule:
    train = replace(tiny.train(), augment_device=device)
    resolved = resolve_train_config(train, tiny.crops())["values"]
    return NeCoModule(train=train, resolved=resolved, seed=tiny.seed, world_size=1)


def test_module_augments_decoded_batches_like_the_cpu_path(tiny: TinySetup) -> None:
    manifest = ManifestIndex.from_path(tiny.manifest)
    idx = [0, 3, 5, 8]
    decoded = DecodedMultiCropDataset(tiny.images(), manifest, epoch=0, params=OFFICIAL, seed=4)
    batch = collate_decoded([decoded[i] for i in idx])
    assert isinstance(batch, DecodedBatch)
    views, gc, all_ = make_module(tiny, "accelerator").on_after_batch_transfer(batch, 0)
    cpu = MultiCropDataset(tiny.images(), manifest, epoch=0, params=OFFICIAL, seed=4)
    for j, i in enumerate(idx):
        ref_views, ref_gc, ref_all = cpu[i]
        assert torch.equal(gc[j], ref_gc) and torch.equal(all_[j], ref_all)
        for v, r, rect in zip(views, ref_views, manifest.get(0, i)[0], strict=True):
            diff = level_diff(v[j], r)
            assert diff.max() == 0 if rect[2] >= rect[3] else diff.mean() <= 0.5
    with pytest.raises(ValueError, match="augment_device=cpu but the loader delivers decoded"):
        make_module(tiny, "cpu").on_after_batch_transfer(batch, 0)
    with pytest.raises(ValueError, match="augment_device=accelerator but the loader delivers aug"):
        make_module(tiny, "accelerator").on_after_batch_transfer(cpu[0], 0)


def test_training_steps_with_accelerator_augmentation_on_cpu(tiny: TinySetup) -> None:
    module = make_module(tiny, "accelerator")
    dm = NeCoDataModule(tiny.images(), tiny.manifest, global_batch_size=4, params=OFFICIAL,
                        seed=tiny.seed, num_workers=0)  # augment_device from the module
    module.set_total_steps(2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    assert dm.resolved_augment_device() is AugmentDevice.ACCELERATOR
    assert len(module.loss_history) == 2 and all(np.isfinite(module.loss_history))
