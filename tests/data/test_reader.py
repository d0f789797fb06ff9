"""Canonical-layout reader and split-file format (datasets.md §0, §9; evaluation.md §1.4)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data.errors import DataError
from neco.data.label_png import decode_image, decode_images, encode_label_png, read_label_png
from neco.data.meta import (
    canonical_split_bytes,
    md5_bytes,
    parse_id_list,
    read_split,
    write_split,
)
from neco.data.reader import ImageDataset, SegmentationDataset, split_path
from neco.data.types import SegDataset
from tests.fixtures.voc_ade import voc_palette

C = 21


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _palette_png(mask: np.ndarray) -> bytes:
    img = Image.fromarray(mask)
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, samples: dict[str, tuple[np.ndarray, bytes]]) -> Path:
    """A prepared tree with split ``s``: ``images/s/<id>.jpg`` and ``masks/s/<id>.png``."""
    (root / "images" / "s").mkdir(parents=True)
    (root / "masks" / "s").mkdir(parents=True)
    for sid, (image, mask_png) in samples.items():
        (root / "images" / "s" / f"{sid}.jpg").write_bytes(_jpeg(image))
        (root / "masks" / "s" / f"{sid}.png").write_bytes(mask_png)
    write_split(root / "splits" / "s.txt", samples)
    return root


def _open(root: Path, *, num_classes: int = C, ignore_index: int = 255) -> SegmentationDataset:
    return SegmentationDataset(
        root, "s", image_dir="images/s", mask_dir="masks/s", image_ext=".jpg",
        num_classes=num_classes, ignore_index=ignore_index,
        class_names=[f"c{i}" for i in range(num_classes)],
    )


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((12, 16), np.uint8)
    m[2:6, 3:9] = 15
    m[6, :] = 255
    m[8:, 10:] = 1
    return m


@pytest.fixture
def image() -> np.ndarray:
    return np.random.Generator(np.random.PCG64(0)).integers(0, 256, (12, 16, 3), np.uint8)


def test_reads_sample_with_palette_indices(
    tmp_path: Path, mask: np.ndarray, image: np.ndarray
) -> None:
    root = _tree(tmp_path, {"b": (image, _palette_png(mask)), "a": (image, encode_label_png(mask))})
    ds = _open(root)
    assert isinstance(ds, SegDataset)
    assert ds.ids == ["a", "b"] and len(ds) == 2
    for i in range(2):
        s = ds[i]
        assert s.image.dtype == np.uint8 and s.image.shape == (12, 16, 3)
        assert s.mask.dtype == np.uint8 and s.mask.shape == (12, 16)
        np.testing.assert_array_equal(s.mask, mask)  # 'P' gives indices: 15 stays 15 (not 147)
    assert ds[1].id == "b"
    decoded = np.asarray(Image.open(root / "images" / "s" / "a.jpg").convert("RGB"))
    np.testing.assert_array_equal(ds[0].image, decoded)


def test_ignore_zero_accepts_zero_and_rejects_151(tmp_path: Path, image: np.ndarray) -> None:
    m = np.zeros((12, 16), np.uint8)
    m[0, 0] = 150
    root = _tree(tmp_path / "ok", {"a": (image, encode_label_png(m))})
    assert _open(root, num_classes=151, ignore_index=0)[0].mask[0, 0] == 150
    m[1, 1] = 151
    root = _tree(tmp_path / "bad", {"a": (image, encode_label_png(m))})
    with pytest.raises(ValueError, match=r"masks/s/a\.png: label value\(s\) \[151\]"):
        _open(root, num_classes=151, ignore_index=0)[0]


def test_error_missing_image(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    root = _tree(tmp_path, {"a": (image, encode_label_png(mask))})
    (root / "images" / "s" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/s/a\.jpg: image file not found"):
        _open(root)[0]


def test_error_missing_mask(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    root = _tree(tmp_path, {"a": (image, encode_label_png(mask))})
    (root / "masks" / "s" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/s/a\.png: mask file not found"):
        _open(root)[0]


def test_error_corrupt_image(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    root = _tree(tmp_path, {"a": (image, encode_label_png(mask))})
    path = root / "images" / "s" / "a.jpg"
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"images/s/a\.jpg: cannot decode image"):
        _open(root)[0]
    path.write_bytes(_jpeg(image)[:200])  # truncated JPEG
    with pytest.raises(DataError, match=r"images/s/a\.jpg: cannot decode image"):
        _open(root)[0]


def test_error_corrupt_or_rgb_mask(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    root = _tree(tmp_path, {"a": (image, b"garbage")})
    with pytest.raises(ValueError, match=r"masks/s/a\.png: cannot decode mask PNG"):
        _open(root)[0]
    buf = io.BytesIO()
    Image.fromarray(np.stack([mask] * 3, -1)).save(buf, format="PNG")
    (root / "masks" / "s" / "a.png").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"masks/s/a\.png: mask has PIL mode 'RGB'"):
        _open(root)[0]


def test_error_size_mismatch(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    root = _tree(tmp_path, {"a": (image, encode_label_png(mask[:, :10]))})
    with pytest.raises(ValueError, match=r"masks/s/a\.png: mask size 10x12 \(WxH\) differs from "
                                         r"image .*images/s/a\.jpg size 16x12"):
        _open(root)[0]


def test_error_label_out_of_range(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    bad = mask.copy()
    bad[0, 0] = 21
    bad[0, 1] = 254
    root = _tree(tmp_path, {"a": (image, encode_label_png(bad))})
    with pytest.raises(ValueError, match=r"masks/s/a\.png: label value\(s\) \[21, 254\] outside "
                                         r"\[0, 21\) and not the ignore index 255"):
        _open(root)[0]


def test_image_dataset_sizes_greyscale_and_pickle(tmp_path: Path) -> None:
    (tmp_path / "images" / "t").mkdir(parents=True)
    Image.new("L", (20, 10), 77).save(tmp_path / "images" / "t" / "g.jpg")
    Image.new("CMYK", (7, 9)).save(tmp_path / "images" / "t" / "k.jpg")
    write_split(tmp_path / "splits" / "t.txt", ["k", "g"])
    ds = ImageDataset(tmp_path, "t", image_dir="images/t", image_ext=".jpg")
    assert ds.ids == ["g", "k"]
    assert ds.sizes() == [(10, 20), (9, 7)]
    img = ds.load(0)
    assert img.mode == "RGB" and img.size == (20, 10)
    s = ds[1]
    assert s.image.shape == (9, 7, 3) and s.image.dtype == np.uint8 and s.id == "k"
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.ids == ds.ids and np.array_equal(clone[1].image, s.image)


def test_segmentation_dataset_pickles(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    ds = _open(_tree(tmp_path, {"a": (image, encode_label_png(mask))}))
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[0].mask, ds[0].mask)
    assert clone.class_names == ds.class_names and clone.ignore_index == 255


def test_label_png_encoding_is_deterministic_L(mask: np.ndarray, tmp_path: Path) -> None:
    data = encode_label_png(mask)
    assert data == encode_label_png(mask.copy())
    (tmp_path / "m.png").write_bytes(data)
    assert Image.open(tmp_path / "m.png").mode == "L"
    np.testing.assert_array_equal(read_label_png(tmp_path / "m.png"), mask)


# ---------------------------------------------------------------------------- split files


def test_write_split_is_canonical(tmp_path: Path) -> None:
    rec = write_split(tmp_path / "x.txt", ["b", "a", "c"])
    data = (tmp_path / "x.txt").read_bytes()
    assert data == b"a\nb\nc\n"
    assert rec.count == 3 and rec.md5 == md5_bytes(data)
    assert read_split(tmp_path / "x.txt") == ["a", "b", "c"]
    # byte order, not locale order: uppercase sorts before lowercase
    assert canonical_split_bytes(["b", "B", "a"], source="t") == b"B\na\nb\n"
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        write_split(tmp_path / "y.txt", ["a", "b", "a"])
    with pytest.raises(ValueError, match="empty split"):
        write_split(tmp_path / "y.txt", [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a\nb", "must end with a newline"),
        (b"a\r\nb\r\n", "LF line endings"),
        (b"b\na\n", "line 2: unsorted id 'a' after 'b'"),
        (b"a\na\n", "line 2: duplicate id 'a'"),
        (b"a\n\nb\n", "line 2: invalid id ''"),
        (b"a \nb\n", "line 1: invalid id 'a '"),
        (b"", "empty split file"),
    ],
)
def test_read_split_rejects_bad_format(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"bad.txt: .*{message}"):
        read_split(path)


def test_read_split_missing_and_split_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"splits/none\.txt: split file not found"):
        read_split(split_path(tmp_path, "none"))
    assert split_path(tmp_path, "hbird/1_div_8/trainaug_8_42") == (
        tmp_path / "splits" / "hbird" / "1_div_8" / "trainaug_8_42.txt"
    )
    for bad in ("", "../x", "/abs", "a//b"):
        with pytest.raises(ValueError, match="invalid split name"):
            split_path(tmp_path, bad)


def test_parse_id_list_keeps_order_and_tolerates_whitespace() -> None:
    assert parse_id_list(b"b\r\na\n\n", source="l") == ["b", "a"]
    assert parse_id_list(b"b\na", source="l") == ["b", "a"]
    with pytest.raises(ValueError, match="l: duplicate id 'a'"):
        parse_id_list(b"a\na\n", source="l")
    with pytest.raises(ValueError, match="l: invalid id 'a b'"):
        parse_id_list(b"a b\n", source="l")


def test_bad_files_raise_data_error_and_the_cli_prints_one_line(
        tmp_path: Path, image: np.ndarray, mask: np.ndarray,
        capsys: pytest.CaptureFixture[str]) -> None:
    """DataError (a ValueError) reaches ``neco.cli.run_stage``'s one-line handler."""
    from neco.cli import run_stage, user_error_types

    root = _tree(tmp_path, {"a": (image, encode_label_png(mask))})
    (root / "masks" / "s" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        _open(root)[0]
    assert isinstance(err.value, ValueError) and DataError in user_error_types()
    with pytest.raises(SystemExit) as exc:
        run_stage(lambda: _open(root)[0])
    assert exc.value.code == 1
    out = capsys.readouterr().err
    assert out.startswith("error: ") and out.count("\n") == 1 and "masks/s/a.png" in out
    (root / "splits" / "s.txt").write_bytes(b"b\na\n")
    with pytest.raises(DataError, match=r"s\.txt: line 2: unsorted id 'a'"):
        _open(root)


def test_decode_image_reads_every_pixel(tmp_path: Path) -> None:
    """The header alone is not enough: a truncated JPEG has a valid header."""
    from neco.data.label_png import image_size

    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(_jpeg(image))
    bad.write_bytes(_jpeg(image)[: len(_jpeg(image)) // 2])
    assert image_size(bad) == decode_image(good) == image.shape[:2]
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image \(corrupt or truncated"):
        decode_image(bad)
    # Thread-pool decoding reports the first bad file in the given order, whatever the timing.
    paths = [good] * 5 + [bad] + [good] * 5 + [tmp_path / "worse.jpg"]
    (tmp_path / "worse.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        decode_images(paths, workers=4)
    assert decode_images([good] * 3, workers=2) == [image.shape[:2]] * 3


def test_missing_meta_names_the_prepare_stage(tmp_path: Path) -> None:
    from neco.data.registry import get_dataset, load_class_names

    with pytest.raises(FileNotFoundError, match=r"meta\.json: meta file not found; run the "
                                                r"prepare@voc stage \(`dvc repro prepare@voc`\)"):
        load_class_names(get_dataset("voc"), tmp_path)
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(DataError, match=r"meta\.json: invalid JSON"):
        load_class_names(get_dataset("voc"), tmp_path)
