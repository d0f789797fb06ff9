"""VOC 2012 + SBD prepare: fixture archives -> canonical tree, pixel-exact (datasets.md §2, §7).

Fixture (tests/fixtures/voc_ade.py): VOC train = 2007_000032, val = 2007_000033; SBD train =
2007_000032, 2008_000002, SBD val = 2007_000033. So trainaug = {2007_000032, 2008_000002}:
2007_000033 is excluded (VOC val), 2007_000032 takes the VOC mask (with 255), 2008_000002 the
SBD mask; classes 1 and 15 are absent from val.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.config import DownloadConfig
from neco.data.class_names import VOC_CLASS_NAMES
from neco.data.hbird_sets import (
    HBIRD_COMMIT,
    HBIRD_MD5,
    HbirdSetsConfig,
    check_file_list,
    expected_files,
    install_hbird_sets,
)
from neco.data.meta import md5_bytes
from neco.data.registry import open_dataset
from neco.data.sources.voc import (
    TrainaugMasks,
    VocConfig,
    fetch_voc,
    load_sbd_mask,
    prepare_voc,
    prepare_voc_tree,
)
from neco.download.archives import ArchiveConfig
from neco.download.extract import extract_archive
from tests.fixtures import voc_ade as fx
from tests.fixtures.http_server import LocalServer, http_server_fixture  # noqa: F401 (fixture)

HB_VOC = sorted(p for p in fx.HBIRD_FILES if p.startswith("voc/"))
NET = DownloadConfig(retries=0, timeout_s=10.0, backoff_s=0.0)  # runtime.download


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fixture archives, extracted with the project's extractor."""
    d = tmp_path_factory.mktemp("voc_raw")
    out = {
        "voc": extract_archive(fx.build_voc_tar(d), d / "x_voc") / "VOCdevkit" / "VOC2012",
        "sbd": extract_archive(fx.build_sbd_tgz(d), d / "x_sbd") / "benchmark_RELEASE" / "dataset",
        "segaug": extract_archive(fx.build_segaug_zip(d), d / "x_aug") / "SegmentationClassAug",
        "hbird": fx.build_hbird_dir(d / "file_sets"),
    }
    return out


def _prepare(raw: dict[str, Path], out: Path, **overrides: object) -> dict:
    kwargs: dict = dict(
        sbd_root=raw["sbd"], segaug_root=None, trainaug_masks=TrainaugMasks.VOC_FIRST,
        hbird_dir=raw["hbird"], hbird_files=HB_VOC, verify_counts=False, name="voc",
        class_names=VOC_CLASS_NAMES, sources={"voc2012": {"md5": None}}, progress=False,
    )
    kwargs.update(overrides)
    return prepare_voc_tree(raw["voc"], out, **kwargs)


def _mask(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "L", path
    return np.array(img)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("voc_out") / "voc"
    _prepare(raw, out)
    return out


def test_fixture_archives_are_deterministic(tmp_path: Path) -> None:
    for build in (fx.build_voc_tar, fx.build_sbd_tgz, fx.build_ade_zip, fx.build_segaug_zip):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        assert build(tmp_path / "a").read_bytes() == build(tmp_path / "b").read_bytes()
    assert fx.voc_palette()[3:6] == [128, 0, 0] and fx.voc_palette()[45:48] == [192, 128, 128]
    assert fx.voc_palette()[765:768] == [224, 224, 192]


def test_sbd_mat_struct_is_read(raw: dict[str, Path]) -> None:
    seg = load_sbd_mask(raw["sbd"] / "cls" / "2008_000002.mat")
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(seg, fx.sbd_label("2008_000002"))


def test_splits_follow_trainaug_formula(prepared: Path) -> None:
    splits = prepared / "splits"
    assert (splits / "train.txt").read_bytes() == b"2007_000032\n"
    assert (splits / "val.txt").read_bytes() == b"2007_000033\n"
    assert (splits / "trainaug.txt").read_bytes() == b"2007_000032\n2008_000002\n"
    assert sorted(p.name for p in (prepared / "images" / "trainaug").iterdir()) == [
        "2007_000032.jpg", "2008_000002.jpg"]
    assert sorted(p.name for p in (prepared / "masks" / "val").iterdir()) == ["2007_000033.png"]
    assert not (prepared / "images" / "trainaug" / "2007_000033.jpg").exists()
    assert not (prepared / "images" / "trainaug" / "2008_000003.jpg").exists()


def test_masks_are_pixel_exact(prepared: Path) -> None:
    voc32 = _mask(prepared / "masks" / "trainaug" / "2007_000032.png")
    # VOC first: the VOC mask (with its 3-px 255 rings), not SBD's (which has class 3, no 255)
    np.testing.assert_array_equal(voc32, fx.voc_label("2007_000032"))
    assert set(np.unique(voc32)) == {0, 1, 15, 255}
    assert voc32[25, 40] == 15 and voc32[10, 10] == 1 and voc32[6, 6] == 255 and voc32[1, 1] == 0
    assert 147 not in voc32  # luminance of palette colour 15 would be 147
    sbd2 = _mask(prepared / "masks" / "trainaug" / "2008_000002.png")
    np.testing.assert_array_equal(sbd2, fx.sbd_label("2008_000002"))
    assert 255 not in sbd2 and sbd2[20, 20] == 7 and sbd2[40, 10] == 20
    val = _mask(prepared / "masks" / "val" / "2007_000033.png")
    np.testing.assert_array_equal(val, fx.voc_label("2007_000033"))
    assert set(np.unique(val)) == {0, 12, 255}  # classes 1 and 15 absent from val


def test_images_copied_verbatim(prepared: Path, raw: dict[str, Path]) -> None:
    for split, sid in (("trainaug", "2007_000032"), ("trainaug", "2008_000002"),
                       ("val", "2007_000033")):
        got = (prepared / "images" / split / f"{sid}.jpg").read_bytes()
        assert got == (raw["voc"] / "JPEGImages" / f"{sid}.jpg").read_bytes()


def test_hbird_sets_and_reference_order(prepared: Path) -> None:
    splits = prepared / "splits"
    canon = splits / "hbird" / "1_div_128" / "trainaug_128_42.txt"
    assert canon.read_bytes() == b"2007_000032\n2008_000002\n"
    verbatim = splits / "reference_order" / "hbird" / "1_div_128" / "trainaug_128_42.txt"
    assert verbatim.read_bytes() == fx.HBIRD_FILES["voc/1_div_128/trainaug_128_42.txt"]
    assert (splits / "reference_order" / "trainaug.txt").read_bytes() == b"2008_000002\n2007_000032"
    assert (splits / "reference_order" / "val.txt").read_bytes() == b"2007_000033\n"


def test_meta_json(prepared: Path) -> None:
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["name"] == "voc" and meta["num_classes"] == 21 and meta["ignore_index"] == 255
    assert meta["class_names"][15] == "person" and len(meta["class_names"]) == 21
    assert meta["params"]["trainaug_masks"] == "voc_first" and meta["params"]["use_sbd"] is True
    for name, rec in meta["splits"].items():
        data = (prepared / "splits" / f"{name}.txt").read_bytes()
        assert rec == {"count": len(data.strip().split(b"\n")), "md5": md5_bytes(data)}, name
    assert set(meta["splits"]) == {
        "train", "val", "trainaug", "hbird/1_div_128/trainaug_128_42",
        "reference_order/hbird/1_div_128/trainaug_128_42", "reference_order/trainaug",
        "reference_order/val"}
    assert meta["converter_version"] and meta["sources"] == {"voc2012": {"md5": None}}


def test_rerun_is_byte_identical(raw: dict[str, Path], prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "voc"
    _prepare(raw, out)
    first = _tree_bytes(out)
    assert first == _tree_bytes(prepared)
    _prepare(raw, out)  # replace in place
    assert _tree_bytes(out) == first
    assert [p.name for p in tmp_path.iterdir()] == ["voc"]  # no staging leftovers


def test_open_dataset_on_prepared_tree(prepared: Path) -> None:
    ds = open_dataset("voc", prepared, "trainaug")
    assert ds.ids == ["2007_000032", "2008_000002"] and ds.num_classes == 21
    s = ds[1]
    assert s.image.shape == (48, 64, 3) and s.id == "2008_000002"
    np.testing.assert_array_equal(s.mask, fx.sbd_label("2008_000002"))
    assert open_dataset("voc", prepared, "train").ids == ["2007_000032"]
    low = open_dataset("voc", prepared, "hbird/1_div_128/trainaug_128_42")
    np.testing.assert_array_equal(low[0].mask, fx.voc_label("2007_000032"))


def test_drsleep_zip_takes_augmented_masks(raw: dict[str, Path], tmp_path: Path) -> None:
    _prepare(raw, tmp_path / "voc", segaug_root=raw["segaug"],
             trainaug_masks=TrainaugMasks.DRSLEEP_ZIP, hbird_dir=None, hbird_files=[])
    for sid in ("2007_000032", "2008_000002"):
        got = _mask(tmp_path / "voc" / "masks" / "trainaug" / f"{sid}.png")
        np.testing.assert_array_equal(got, fx.segaug_label(sid))
    val = _mask(tmp_path / "voc" / "masks" / "val" / "2007_000033.png")
    np.testing.assert_array_equal(val, fx.voc_label("2007_000033"))


def test_without_sbd_trainaug_is_train(raw: dict[str, Path], tmp_path: Path) -> None:
    meta = _prepare(raw, tmp_path / "voc", sbd_root=None, hbird_dir=None, hbird_files=[])
    assert (tmp_path / "voc" / "splits" / "trainaug.txt").read_bytes() == b"2007_000032\n"
    assert meta["params"]["use_sbd"] is False


def test_trainval_must_be_train_plus_val(raw: dict[str, Path], tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    shutil.copytree(raw["voc"], voc)
    (voc / "ImageSets" / "Segmentation" / "trainval.txt").write_bytes(b"2007_000032\n")
    with pytest.raises(ValueError, match=r"trainval\.txt: does not equal train\.txt"):
        prepare_voc_tree(voc, tmp_path / "voc", sbd_root=None, segaug_root=None,
                         trainaug_masks=TrainaugMasks.VOC_FIRST, hbird_dir=None, hbird_files=[],
                         verify_counts=False, name="voc", class_names=VOC_CLASS_NAMES,
                         sources={}, progress=False)


def test_verify_counts_fails_on_fixture(raw: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'train': 1 ids, expected 1464"):
        _prepare(raw, tmp_path / "voc", hbird_dir=None, hbird_files=[], verify_counts=True)
    assert not (tmp_path / "voc").exists()  # nothing half-written


def test_hbird_subset_violation_names_file(raw: dict[str, Path], tmp_path: Path) -> None:
    hb = fx.build_hbird_dir(tmp_path / "hb")
    bad = hb / "voc" / "1_div_128" / "trainaug_128_42.txt"
    bad.write_bytes(b"2007_000033\n2007_000032\n")  # a val id
    with pytest.raises(ValueError, match=r"trainaug_128_42\.txt: 1 id\(s\) not in the trainaug"):
        _prepare(raw, tmp_path / "voc", hbird_dir=hb)
    (hb / "voc" / "val.txt").write_bytes(b"2007_000032\n")
    bad.write_bytes(b"2007_000032\n")
    with pytest.raises(ValueError, match=r"val\.txt: reference-order list does not hold"):
        _prepare(raw, tmp_path / "voc", hbird_dir=hb)


def test_hbird_table_and_production_checks(tmp_path: Path) -> None:
    assert len(HBIRD_MD5) == 32 and len(HBIRD_COMMIT) == 40
    assert HBIRD_MD5["voc/1_div_8/trainaug_8_42.txt"] == "0ac19707a99371de6f8b1365bccd2fee"
    assert HBIRD_MD5["voc/1_div_128/trainaug_128_4019.txt"] == "22617dbb37b4a75f5f0c4fb268f0e6d2"
    assert HBIRD_MD5["ade20k/1_div_64/training_64_783.txt"] == "5d509b68d023f68bf95672a415eed050"
    assert HBIRD_MD5["voc/full/trainaug.txt"] == "3b20577ce87eb9beafd81438ebc61d41"
    assert len(expected_files("voc")) == 17 and len(expected_files("ade20k")) == 15
    with pytest.raises(ValueError, match="missing"):
        check_file_list(["voc/1_div_128/trainaug_128_42.txt"], dataset="voc", verify=True)
    with pytest.raises(ValueError, match="not a voc file set"):
        check_file_list(["ade20k/1_div_8/training_8_42.txt"], dataset="voc", verify=False)
    with pytest.raises(ValueError, match="expected 'voc/1_div_<d>/trainaug_<d>_<seed>.txt'"):
        check_file_list(["voc/1_div_8/trainaug_64_42.txt"], dataset="voc", verify=False)
    for rel in expected_files("voc"):  # fixture bytes under production names: md5 must fail
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"2007_000032\n")
    with pytest.raises(ValueError, match=r"ade20k|voc.*md5 [0-9a-f]{32} != expected"):
        install_hbird_sets(tmp_path, expected_files("voc"), dataset="voc",
                           splits_dir=tmp_path / "splits", canonical={}, verify=True)


def _cfg(server: LocalServer, tmp_path: Path, *, verify: bool = False) -> VocConfig:
    src = tmp_path / "src"
    src.mkdir()
    archives = {}
    for key, build in (("voc2012", fx.build_voc_tar), ("sbd", fx.build_sbd_tgz)):
        path = build(src)
        url = server.add(f"/{path.name}", path.read_bytes())
        archives[key] = ArchiveConfig(filename=path.name, urls=[url],
                                      md5=hashlib.md5(path.read_bytes()).hexdigest(), sha1=None,
                                      size=path.stat().st_size, local_path=None)
    for rel, data in fx.HBIRD_FILES.items():
        server.add(f"/file_sets/{rel}", data, content_type="text/plain")
    return VocConfig(
        archives=archives, use_sbd=True, trainaug_masks=TrainaugMasks.VOC_FIRST,
        hbird_sets=HbirdSetsConfig(base_url=server.url("/file_sets"), files=HB_VOC),
        verify_counts=verify, cache_dir=None,
    )


def test_end_to_end_http_fetch_prepare_open(http_server: LocalServer, tmp_path: Path) -> None:
    cfg = _cfg(http_server, tmp_path)
    raw_dir, out = tmp_path / "raw" / "voc", tmp_path / "prepared" / "voc"
    fetch_voc(cfg, raw_dir, download=NET, progress=False)
    assert (raw_dir / fx.VOC_TAR).is_file() and (raw_dir / "hbird_sets" / HB_VOC[0]).is_file()
    prepare_voc(cfg, raw_dir, out, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["voc"]  # extraction dir removed
    ds = open_dataset("voc", out, "val")
    s = ds[0]
    assert s.id == "2007_000033" and s.image.shape == (64, 48, 3)
    np.testing.assert_array_equal(s.mask, fx.voc_label("2007_000033"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["sbd"]["md5"] == cfg.archives["sbd"].md5
    assert "reference_order/trainaug" in meta["splits"]
    assert meta["sources"]["hbird_sets"]["files"] == HB_VOC


def test_prepare_refuses_unfetched_archives(tmp_path: Path) -> None:
    server = LocalServer(host="127.0.0.1", port=9)  # never contacted
    cfg = _cfg(server, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"VOCtrainval_11-May-2012\.tar: archive not found; "
                       r"run the download@voc stage first \(`dvc repro download@voc`\)"):
        prepare_voc(cfg, tmp_path / "raw", tmp_path / "out", progress=False)


def test_truncated_jpeg_in_a_good_archive_fails_prepare(raw: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """Every image is decoded during prepare: a header-valid but truncated JPEG is a DataError
    naming the file, and no prepared tree is published."""
    from neco.data.errors import DataError

    voc = tmp_path / "VOC2012"
    shutil.copytree(raw["voc"], voc)
    image = voc / "JPEGImages" / "2007_000032.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"2007_000032\.jpg: cannot decode image \(corrupt or "
                                        r"truncated\?\): image file is truncated"):
        _prepare({**raw, "voc": voc}, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
