"""Multi-crop views and photometric augmentation (``neco.method.augment``; method.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from neco.config.method import CropConfig
from neco.method.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotometricParams,
    cut_crop,
    make_views,
    to_normalised_tensor,
)
from neco.method.manifest import ManifestIndex, build_manifest

torch.set_num_threads(1)

OFFICIAL = PhotometricParams(jitter_strength=1.0, blur_strength=1.0)
NONE = PhotometricParams(jitter_strength=0.0, blur_strength=0.0)
CROPS = CropConfig(
    num_global=2,
    num_local=4,
    global_scale=[0.25, 1.0],
    local_scale=[0.05, 0.25],
    ratio=[0.75, 4 / 3],
    min_intersection=0.01,
    second_global_factor=2.0,
    max_retries=1000,
    global_size=None,
    local_size=None,
)


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A colourful RGB image with smooth and sharp structure (edges matter for the filters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    diagonal = (xx + yy) * 127 // (width + height)
    smooth = np.stack([xx * 255 // width, yy * 255 // height, diagonal], -1)
    noise = rng.integers(0, 96, (height, width, 3))
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return noise_image(72, 56, seed=0)


@pytest.fixture(scope="module")
def manifest() -> ManifestIndex:
    df = build_manifest(
        [("a", 72, 56), ("b", 40, 90)], epochs=2, seed=7, cfg=CROPS, global_size=40, local_size=24
    )
    return ManifestIndex(df)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


def test_views_follow_manifest_sizes(image: Image.Image, manifest: ManifestIndex) -> None:
    rects, sizes, _, _ = manifest.get(1, 0)
    views = make_views(image, rects, sizes, params=OFFICIAL, seed=3, epoch=1, index=0)
    assert [tuple(v.shape) for v in views] == [(3, 40, 40)] * 2 + [(3, 24, 24)] * 4
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_make_views_deterministic_per_seed_epoch_index(
    image: Image.Image, manifest: ManifestIndex
) -> None:
    rects, sizes, _, _ = manifest.get(0, 0)

    def views(seed: int, epoch: int, index: int) -> torch.Tensor:
        out = make_views(image, rects, sizes, params=OFFICIAL, seed=seed, epoch=epoch, index=index)
        return torch.cat([v.flatten() for v in out])

    ref = views(400, 0, 0)
    assert torch.equal(ref, views(400, 0, 0))
    # same geometry, another epoch / index / seed: other photometric draws
    for other in (views(400, 1, 0), views(400, 0, 1), views(401, 0, 0)):
        assert not torch.allclose(ref, other)


def test_views_differ_across_manifest_epochs(image: Image.Image, manifest: ManifestIndex) -> None:
    first = manifest.get(0, 0)
    second = manifest.get(1, 0)
    assert not np.array_equal(first[0], second[0])  # the manifest re-draws the geometry
    a = make_views(image, first[0], first[1], params=NONE, seed=1, epoch=0, index=0)
    b = make_views(image, second[0], second[1], params=NONE, seed=1, epoch=1, index=0)
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ((5, 7, 40, 30), 32),  # downscale, interior
        ((0, 0, 72, 56), 16),  # the whole image
        ((10, 3, 12, 9), 32),  # upscale, non-square
        ((60, 40, 12, 16), 24),  # touching the right/bottom border
        ((3, 4, 50, 51), 28),
    ],
)
def test_cut_crop_equals_torchvision_resized_crop(
    image: Image.Image, box: tuple[int, int, int, int], size: int
) -> None:
    """RandomResizedCrop semantics (official): crop first, bilinear resize of the crop only."""
    x, y, w, h = box
    ours = cut_crop(image, np.asarray(box), size)
    ref = TF.resized_crop(image, y, x, h, w, [size, size], interpolation=InterpolationMode.BILINEAR)
    assert ours.size == (size, size)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    expected = TF.normalize(TF.to_tensor(ref), list(IMAGENET_MEAN), list(IMAGENET_STD))
    torch.testing.assert_close(to_normalised_tensor(ours), expected, rtol=0, atol=0)


def _plain_and_gray(image: Image.Image, box: np.ndarray, size: int) -> tuple[torch.Tensor, ...]:
    crop = cut_crop(image, box, size)
    plain = TF.to_tensor(crop)
    gray = TF.to_tensor(crop.convert("L").convert("RGB"))
    return plain, gray


def test_zero_strengths_are_identity_except_grayscale(image: Image.Image) -> None:
    """s = s' = 0: jitter and blur are no-ops (torchvision skips zero ranges); only p=0.2 gray.

    Fails if any adjustment still runs at strength 0 (e.g. ``adjust_hue(0)``, which is not an
    identity: an HSV round trip), or if the grayscale draw is missing.
    """
    box, size = np.array([4, 6, 40, 36]), 32
    plain, gray = _plain_and_gray(image, box, size)
    n, kinds = 60, {"plain": 0, "gray": 0}
    for index in range(n):
        (view,) = make_views(image, box[None], np.array([size]), params=NONE, seed=5, epoch=0,
                             index=index)
        x = unnormalise(view)
        if torch.allclose(x, plain, atol=1e-6):
            kinds["plain"] += 1
        elif torch.allclose(x, gray, atol=1e-6):
            kinds["gray"] += 1
        else:
            pytest.fail(f"view {index}: strength 0 changed the crop (max diff "
                        f"{(x - plain).abs().max():.4f})")
    assert 3 <= kinds["gray"] <= 24, kinds  # Binomial(60, 0.2): mean 12


@pytest.mark.parametrize(
    ("params", "min_changed"),
    [(OFFICIAL, 40), (PhotometricParams(jitter_strength=0.0, blur_strength=1.0), 20),
     (PhotometricParams(jitter_strength=1.0, blur_strength=0.0), 36)],
)
def test_nonzero_strengths_change_the_crop(
    image: Image.Image, params: PhotometricParams, min_changed: int
) -> None:
    """The check above can fail: with s > 0 (jitter p=0.8) or s' > 0 (blur p=0.5) views change."""
    box, size = np.array([4, 6, 40, 36]), 32
    plain, gray = _plain_and_gray(image, box, size)
    changed = 0
    for index in range(60):
        (view,) = make_views(image, box[None], np.array([size]), params=params, seed=5, epoch=0,
                             index=index)
        x = unnormalise(view)
        changed += not (torch.allclose(x, plain, atol=1e-6) or torch.allclose(x, gray, atol=1e-6))
    # expected: 60 * (1 - 0.2 * 0.5) = 54 for jitter+blur, 60 * 0.8 = 48 jitter, 60 * 0.5 = 30 blur
    assert changed >= min_changed
