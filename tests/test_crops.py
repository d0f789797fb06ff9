"""Crop sampling (torchvision RandomResizedCrop semantics + overlap constraint) and geometry."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from neco.config.method import CropConfig
from neco.method.crops import (
    CropSamplingError,
    crop_rng,
    fallback_crop,
    from_frame,
    overlap_boxes,
    rect_to_xyxy,
    sample_crop,
    sample_views,
    to_frame,
    validate_crop_config,
)

CFG = CropConfig(
    num_global=2,
    num_local=4,
    global_scale=[0.25, 1.0],
    local_scale=[0.05, 0.25],
    ratio=[3 / 4, 4 / 3],
    min_intersection=0.01,
    second_global_factor=2.0,
    max_retries=100,
    global_size=None,
    local_size=None,
)
RATIO = (3 / 4, 4 / 3)
SIZES = [(160, 120), (120, 160), (100, 100), (300, 50), (50, 300), (97, 131), (518, 389), (7, 3)]


def _tv_get_params(
    width: int, height: int, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    from torchvision.transforms import RandomResizedCrop

    i, j, h, w = RandomResizedCrop.get_params(
        torch.empty(1, height, width), list(scale), list(RATIO)
    )
    return j, i, w, h


@pytest.mark.parametrize("width,height", SIZES)
def test_fallback_equals_torchvision(width: int, height: int) -> None:
    """scale > 1 never fits, so both take the centre-crop fallback."""
    torch.manual_seed(0)
    expected = _tv_get_params(width, height, (2.0, 3.0))
    assert fallback_crop(width, height, RATIO) == expected
    assert (
        sample_crop(
            np.random.default_rng(0), width=width, height=height, scale=(2.0, 3.0), ratio=RATIO
        )
        == expected
    )


@pytest.mark.parametrize("scale", [(0.25, 1.0), (0.05, 0.25)])
def test_sampling_distribution_matches_torchvision(scale: tuple[float, float]) -> None:
    from scipy.stats import ks_2samp

    width, height, n = 160, 120, 3000
    rng = np.random.default_rng(0)
    ours = np.array(
        [sample_crop(rng, width=width, height=height, scale=scale, ratio=RATIO) for _ in range(n)]
    )
    torch.manual_seed(0)
    ref = np.array([_tv_get_params(width, height, scale) for _ in range(n)])
    for crops in (ours, ref):
        x, y, w, h = crops.T
        assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (h >= 1).all()
        assert (x + w <= width).all() and (y + h <= height).all()
        # rounding of w and h to integers widens the ratio range by at most 0.5 px per side
        assert (w / h >= RATIO[0] * (1 - 0.5 / w) / (1 + 0.5 / h) - 1e-12).all()
        assert (w / h <= RATIO[1] * (1 + 0.5 / w) / (1 - 0.5 / h) + 1e-12).all()
        frac = (w + 1) * (h + 1) / (width * height)
        assert (frac >= scale[0]).all()
    for k in range(4):
        assert ks_2samp(ours[:, k], ref[:, k]).pvalue > 1e-3, k
    assert abs(ours[:, 2].mean() - ref[:, 2].mean()) < 0.05 * ref[:, 2].mean()


def test_sample_crop_consumes_a_fixed_stream() -> None:
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    sample_crop(a, width=50, height=300, scale=(0.9, 1.0), ratio=RATIO)  # usually the fallback
    sample_crop(b, width=300, height=300, scale=(0.1, 0.2), ratio=RATIO)
    assert a.random() == b.random()


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0) * max(dy, 0)


@pytest.mark.parametrize("width,height", SIZES[:6])
def test_views_inside_image_and_overlapping(width: int, height: int) -> None:
    for index in range(40):
        views = sample_views(
            crop_rng(7, 0, index), width=width, height=height, cfg=CFG, image_id="x", epoch=0
        )
        assert views.shape == (6, 4) and views.dtype == np.int64
        x, y, w, h = views.T
        assert (
            (x >= 0).all() and (y >= 0).all() and (x + w <= width).all() and (y + h <= height).all()
        )
        area = width * height
        assert _overlap(views[1], views[0]) > 0.02 * area
        for v in range(2, 6):
            assert _overlap(views[v], views[0]) > 0.01 * area
            assert _overlap(views[v], views[1]) > 0.01 * area


def test_views_are_seeded_per_image_and_epoch() -> None:
    def views(seed: int, epoch: int, index: int) -> np.ndarray:
        return sample_views(
            crop_rng(seed, epoch, index), width=160, height=120, cfg=CFG, image_id="x", epoch=epoch
        )

    np.testing.assert_array_equal(views(1, 2, 3), views(1, 2, 3))
    assert not np.array_equal(views(1, 2, 3), views(1, 2, 4))
    assert not np.array_equal(views(1, 2, 3), views(1, 3, 3))
    assert not np.array_equal(views(1, 2, 3), views(2, 2, 3))


def test_retry_cap_raises_naming_image_and_epoch() -> None:
    # globals need > 0.9 % overlap (easy), local crops > 90 % (impossible: they cover <= 25 %)
    impossible = replace(CFG, min_intersection=0.9, second_global_factor=0.01, max_retries=3)
    with pytest.raises(
        CropSamplingError, match=r"image 'demo_000007'.*epoch 4.*view 2.*max_retries=3"
    ):
        sample_views(
            crop_rng(0, 4, 6),
            width=100,
            height=100,
            cfg=impossible,
            image_id="demo_000007",
            epoch=4,
        )


def test_config_validation_names_key() -> None:
    validate_crop_config(CFG)
    with pytest.raises(ValueError, match="crops.local_scale"):
        validate_crop_config(replace(CFG, local_scale=[0.3, 0.2]))
    with pytest.raises(ValueError, match="crops.max_retries"):
        validate_crop_config(replace(CFG, max_retries=-1))


# ------------------------------------------------------------------------------------------
# Geometry (method.md §3)


def test_identical_crops_give_full_box() -> None:
    rects = np.array([[10, 20, 50, 40]] * 3)
    gc, all_ = overlap_boxes(rects, np.array([224, 224, 98]), num_global=2)
    np.testing.assert_allclose(gc[0, 1], [0, 0, 224, 224])
    np.testing.assert_allclose(gc[1, 2], [0, 0, 224, 224])
    np.testing.assert_allclose(all_[2, 0], [0, 0, 98, 98])


def test_nested_crop_gives_expected_sub_box() -> None:
    rects = np.array([[0, 0, 100, 50], [25, 10, 50, 20]])  # view 1 inside global 0
    gc, all_ = overlap_boxes(rects, np.array([200, 40]), num_global=1)
    # in global 0's frame: x scale 200/100, y scale 200/50
    np.testing.assert_allclose(gc[0, 1], [50.0, 40.0, 150.0, 120.0])
    np.testing.assert_allclose(all_[1, 0], [0.0, 0.0, 40.0, 40.0])
    assert gc.shape == (1, 2, 4) and all_.shape == (2, 1, 4)


def test_both_frames_describe_the_same_image_region() -> None:
    for index in range(50):
        rects = sample_views(
            crop_rng(0, 0, index), width=143, height=97, cfg=CFG, image_id="x", epoch=0
        )
        sizes = np.array([112, 112, 48, 48, 48, 48])
        gc, all_ = overlap_boxes(rects, sizes, num_global=2)
        xyxy = rect_to_xyxy(rects)
        for g in range(2):
            for v in range(6):
                img_g = from_frame(gc[g, v], rects[g], sizes[g])
                img_v = from_frame(all_[v, g], rects[v], sizes[v])
                np.testing.assert_allclose(img_g, img_v, atol=1e-9)
                expected = [
                    *np.maximum(xyxy[g, :2], xyxy[v, :2]),
                    *np.minimum(xyxy[g, 2:], xyxy[v, 2:]),
                ]
                np.testing.assert_allclose(img_g, expected, atol=1e-9)
    back = from_frame(gc, rects[:2, None], sizes[:2, None])
    np.testing.assert_allclose(to_frame(back, rects[:2, None], sizes[:2, None]), gc)


def _brute_force_box(
    rect_a: np.ndarray, rect_b: np.ndarray, size: int, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Rasterise both crops, intersect, and find the output pixels of crop a that sample it."""
    mask = np.zeros((height, width), bool)
    mask[rect_a[1] : rect_a[1] + rect_a[3], rect_a[0] : rect_a[0] + rect_a[2]] = True
    other = np.zeros_like(mask)
    other[rect_b[1] : rect_b[1] + rect_b[3], rect_b[0] : rect_b[0] + rect_b[2]] = True
    mask &= other
    centres = np.arange(size) + 0.5
    xs = np.floor(rect_a[0] + centres * rect_a[2] / size).astype(int)
    ys = np.floor(rect_a[1] + centres * rect_a[3] / size).astype(int)
    resized = mask[np.ix_(ys, xs)]  # nearest resize of the intersection mask into crop a
    if not resized.any():
        return None
    rows, cols = np.nonzero(resized.any(1))[0], np.nonzero(resized.any(0))[0]
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def test_frames_agree_with_pixel_masks() -> None:
    width, height = 131, 97
    sizes = np.array([64, 64, 24, 24, 24, 24])
    checked = 0
    for index in range(25):
        rects = sample_views(
            crop_rng(5, 1, index), width=width, height=height, cfg=CFG, image_id="x", epoch=1
        )
        gc, all_ = overlap_boxes(rects, sizes, num_global=2)
        for g in range(2):
            for v in range(6):
                for frame_rect, other, size, box in (
                    (rects[g], rects[v], sizes[g], gc[g, v]),
                    (rects[v], rects[g], sizes[v], all_[v, g]),
                ):
                    pixel = _brute_force_box(frame_rect, other, int(size), width, height)
                    assert pixel is not None
                    # integer crops: pixel-centre sampling is within half an output pixel
                    np.testing.assert_allclose(box, pixel, atol=0.5 + 1e-9)
                    assert (
                        0 <= box[0] < box[2] <= size + 1e-9 and 0 <= box[1] < box[3] <= size + 1e-9
                    )
                    checked += 1
    assert checked == 25 * 2 * 6 * 2


def test_overlap_boxes_batches() -> None:
    rects = np.stack(
        [
            sample_views(crop_rng(0, 0, i), width=120, height=90, cfg=CFG, image_id="x", epoch=0)
            for i in range(4)
        ]
    )
    sizes = np.array([112, 112, 48, 48, 48, 48])
    gc, all_ = overlap_boxes(rects, sizes, num_global=2)
    assert gc.shape == (4, 2, 6, 4) and all_.shape == (4, 6, 2, 4)
    for b in range(4):
        gb, ab = overlap_boxes(rects[b], sizes, num_global=2)
        np.testing.assert_array_equal(gc[b], gb)
        np.testing.assert_array_equal(all_[b], ab)
    assert math.isclose(float(gc[0, 0, 0, 2]), 112.0)
