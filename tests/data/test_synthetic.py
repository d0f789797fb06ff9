"""Synthetic demo dataset (datasets.md §11): layout, determinism, masks, coverage, colour test."""

from __future__ import annotations

import colorsys
import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data.sources.synthetic_images import (
    CLASS_NAMES,
    SyntheticConfig,
    encode_mask_png,
    generate,
    render,
    validate_config,
)
from neco.data.sources.synthetic_shapes import (
    Shape,
    Texture,
    boundary_band,
    hsv_to_rgb,
    pixel_grid,
    pixel_noise,
    shape_mask,
    texture_mask,
    voc_palette,
)

VOC = Path("VOCdevkit") / "VOC2012"
DEMO = SyntheticConfig(
    seed=0,
    num_train=96,
    num_val=32,
    sizes=[96, 112, 128, 144, 160],
    objects_min=1,
    objects_max=3,
    object_frac_min=0.2,
    object_frac_max=0.6,
    texture_period_min=6.0,
    texture_period_max=12.0,
    colour_min_sv=0.3,
    colour_min_contrast=100.0,
    background_cells=4,
    boundary_width=2,
    difficult_prob=0.05,
    noise_sigma=8.0,
    jpeg_quality=95,
)
SMALL = replace(DEMO, num_train=8, num_val=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    root = tmp_path_factory.mktemp("synthetic") / "raw"
    t0 = time.process_time()
    manifest = generate(DEMO, root, progress=False)
    return root, manifest, time.process_time() - t0


def _ids(root: Path, split: str) -> list[str]:
    text = (root / VOC / "ImageSets" / "Segmentation" / f"{split}.txt").read_text()
    assert text.endswith("\n") and "\r" not in text
    return text.splitlines()


def _masks(root: Path, ids: list[str]) -> list[np.ndarray]:
    return [np.array(Image.open(root / VOC / "SegmentationClass" / f"{i}.png")) for i in ids]


def _all_md5(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_splits_and_manifest(demo: tuple[Path, dict, float]) -> None:
    root, manifest, _ = demo
    train, val, trainval = _ids(root, "train"), _ids(root, "val"), _ids(root, "trainval")
    assert train == [f"demo_{i:06d}" for i in range(1, 97)]
    assert val == [f"demo_{i:06d}" for i in range(97, 129)]
    assert trainval == sorted(train + val)
    for i in trainval:
        assert (root / VOC / "JPEGImages" / f"{i}.jpg").is_file()
        assert (root / VOC / "SegmentationClass" / f"{i}.png").is_file()
    assert manifest["splits"] == {"train": 96, "val": 32, "trainval": 128}
    assert manifest["class_names"] == list(CLASS_NAMES) and len(CLASS_NAMES) == 7
    assert manifest["seed"] == 0 and manifest["params"]["num_train"] == 96
    on_disk = _all_md5(root)
    assert on_disk.pop("manifest.json")
    assert on_disk == manifest["files"]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_masks_palette_values_and_sizes(demo: tuple[Path, dict, float]) -> None:
    root, _, _ = demo
    palette = voc_palette()
    assert palette[3:6] == [128, 0, 0] and palette[45:48] == [192, 128, 128]
    assert palette[765:768] == [224, 224, 192]
    for i in _ids(root, "trainval"):
        png = Image.open(root / VOC / "SegmentationClass" / f"{i}.png")
        assert png.mode == "P"
        assert png.getpalette()[:768] == palette
        mask = np.array(png)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= set(range(7)) | {255}
        assert ((mask >= 1) & (mask <= 6)).any(), f"{i}: no foreground"
        assert (mask == 255).any(), f"{i}: no void"
        with Image.open(root / VOC / "JPEGImages" / f"{i}.jpg") as jpg:
            assert jpg.mode == "RGB" and jpg.size == (mask.shape[1], mask.shape[0])
    sizes = {Image.open(root / VOC / "JPEGImages" / f"{i}.jpg").size for i in _ids(root, "train")}
    assert any(w != h for w, h in sizes) and len(sizes) > 10


def test_no_label_boundary_without_void(demo: tuple[Path, dict, float]) -> None:
    """Non-void pixels closer than 2w + 1 (Chebyshev) carry the same label: the band is 2w wide."""
    root, _, _ = demo
    w = 2 * DEMO.boundary_width
    for mask in _masks(root, _ids(root, "trainval")):
        h, wd = mask.shape
        for dy in range(0, w + 1):
            for dx in range(-w, w + 1):
                a = mask[: h - dy, max(0, -dx) : wd - max(0, dx)]
                b = mask[dy:, max(0, dx) : wd - max(0, -dx)]
                both = (a != 255) & (b != 255)
                assert (a[both] == b[both]).all()


def test_boundary_band_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros((20, 23), np.uint8)
    labels[4:12, 5:15] = 1
    labels[9:17, 11:20] = 3
    for width in (0, 1, 2, 3):
        band = boundary_band(labels, width)
        expected = np.zeros_like(band)
        for y in range(20):
            for x in range(23):
                win = labels[max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
                expected[y, x] = (win != labels[y, x]).any()
        np.testing.assert_array_equal(band, expected)
    assert boundary_band(rng.integers(0, 1, (5, 5)), 2).sum() == 0


def test_class_coverage(demo: tuple[Path, dict, float]) -> None:
    root, _, _ = demo
    for split, minimum in (("train", 16), ("val", 5)):
        counts = np.zeros(7, int)
        for mask in _masks(root, _ids(root, split)):
            present = np.unique(mask)
            counts[present[(present >= 1) & (present <= 6)]] += 1
        assert (counts[1:] >= minimum).all(), (split, counts)


def _colour_classifier_accuracy(
    train: list[tuple[np.ndarray, np.ndarray]], val: list[tuple[np.ndarray, np.ndarray]]
) -> float:
    """RGB 8x8x8 histogram; each bin predicts its majority class on train foreground pixels."""

    def fg(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        bins, labels = [], []
        for image, mask in pairs:
            keep = (mask >= 1) & (mask <= 6)
            q = image[keep].astype(np.int64) >> 5
            bins.append(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2])
            labels.append(mask[keep].astype(np.int64))
        return np.concatenate(bins), np.concatenate(labels)

    tb, tl = fg(train)
    hist = np.zeros((512, 7), np.int64)
    np.add.at(hist, (tb, tl), 1)
    predict = hist.argmax(1)
    vb, vl = fg(val)
    return float((predict[vb] == vl).mean())


def test_colour_only_classifier_is_at_chance(demo: tuple[Path, dict, float]) -> None:
    root, _, _ = demo

    def load(split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        ids = _ids(root, split)
        images = [np.array(Image.open(root / VOC / "JPEGImages" / f"{i}.jpg")) for i in ids]
        return list(zip(images, _masks(root, ids), strict=True))

    accuracy = _colour_classifier_accuracy(load("train"), load("val"))
    assert accuracy <= 1 / 6 + 0.10, accuracy


def test_colour_classifier_detects_colour_coded_classes() -> None:
    """Control: the same classifier is perfect when colour encodes the class."""
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(4):
        mask = rng.integers(0, 7, (16, 16)).astype(np.uint8)
        image = np.stack([mask * 36, 255 - mask * 36, mask * 20], -1).astype(np.uint8)
        pairs.append((image, mask))
    assert _colour_classifier_accuracy(pairs[:2], pairs[2:]) == 1.0


def test_timing_and_size(demo: tuple[Path, dict, float]) -> None:
    root, _, seconds = demo
    assert seconds < 20.0, f"generation took {seconds:.1f} s CPU (target <= 5 s on one core)"
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5_000_000, f"dataset is {size / 1e6:.2f} MB (limit 5 MB)"


def test_determinism_same_and_other_seed(tmp_path: Path) -> None:
    a = generate(SMALL, tmp_path / "a", progress=False)
    b = generate(SMALL, tmp_path / "b", progress=False)
    c = generate(replace(SMALL, seed=1), tmp_path / "c", progress=False)
    assert _all_md5(tmp_path / "a") == _all_md5(tmp_path / "b")
    assert a["arrays"] == b["arrays"] and a["files"] == b["files"]
    differing = [k for k in a["arrays"] if a["arrays"][k] != c["arrays"][k]]
    assert len(differing) == len(a["arrays"])
    # image i depends only on (seed, i): a larger dataset starts with the same images
    bigger = generate(replace(SMALL, num_train=10), tmp_path / "d", progress=False)
    assert all(
        bigger["arrays"][f"demo_{i:06d}"] == a["arrays"][f"demo_{i:06d}"] for i in range(1, 9)
    )


def test_regenerate_replaces_directory(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    (root / "stale.txt").write_text("x")
    generate(SMALL, root, progress=False)
    assert not (root / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_difficult_objects_are_void() -> None:
    cfg = replace(SMALL, objects_min=3, objects_max=3, difficult_prob=1.0)
    for position in range(6):
        _, mask = render(cfg, position, position)
        fg = set(np.unique(mask).tolist()) - {0, 255}
        assert fg == {1 + position % 6}  # only the (never difficult) round-robin object


def test_png_round_trip_keeps_indices() -> None:
    mask = np.array([[0, 1, 6], [255, 3, 0]], np.uint8)
    import io

    img = Image.open(io.BytesIO(encode_mask_png(mask)))
    assert img.mode == "P"
    np.testing.assert_array_equal(np.array(img), mask)


def test_config_validation_names_key() -> None:
    with pytest.raises(ValueError, match="objects_max"):
        validate_config(replace(DEMO, objects_max=0))
    with pytest.raises(ValueError, match="difficult_prob"):
        validate_config(replace(DEMO, difficult_prob=1.5))


def test_hsv_matches_colorsys() -> None:
    rng = np.random.default_rng(0)
    hsv = rng.random((200, 3))
    ours = hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    ref = np.array([colorsys.hsv_to_rgb(*row) for row in hsv])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_shapes_have_equal_area_and_textures_are_balanced() -> None:
    yy, xx = pixel_grid(200, 200)
    rot = (0.6, 0.8)
    for shape in Shape:
        area = shape_mask(shape, yy, xx, cy=100.0, cx=100.0, size=80.0, rot=rot).sum()
        assert area == pytest.approx(np.pi * 40.0**2, rel=0.03), shape
    for texture in Texture:
        tex = texture_mask(texture, yy, xx, period=8.0, rot=rot, phase=(0.3, 0.7))
        assert tex.mean() == pytest.approx(0.5, abs=0.03), texture
    stripes = texture_mask(Texture.STRIPES, yy, xx, period=8.0, rot=(1.0, 0.0), phase=(0.0, 0.0))
    np.testing.assert_array_equal(stripes[0, :16], np.repeat([0, 1, 0, 1], 4).astype(bool))


def test_pixel_noise_moments() -> None:
    noise = pixel_noise(np.random.default_rng(0), (200, 200, 3), sigma=8.0)
    assert abs(noise.mean()) < 0.1
    assert noise.std() == pytest.approx(8.0, rel=0.02)
