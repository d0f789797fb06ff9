"""ADE20K prepare: pairing by id, stray files, ignore-0 metadata (datasets.md §3, §7, §9)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.config import DownloadConfig
from neco.data.class_names import ADE20K_CLASS_NAMES
from neco.data.hbird_sets import HbirdSetsConfig
from neco.data.label_png import encode_label_png
from neco.data.registry import open_dataset
from neco.data.sources.ade20k import (
    Ade20kConfig,
    check_object_info,
    fetch_ade20k,
    prepare_ade20k,
    prepare_ade20k_tree,
)
from neco.download.archives import ArchiveConfig
from neco.download.extract import extract_archive
from tests.fixtures import voc_ade as fx
from tests.fixtures.http_server import LocalServer, http_server_fixture  # noqa: F401 (fixture)

HB_ADE = ["ade20k/1_div_128/training_128_42.txt"]
NET = DownloadConfig(retries=0, timeout_s=10.0, backoff_s=0.0)  # runtime.download


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    """A fresh extracted fixture (tests may damage it)."""
    return extract_archive(fx.build_ade_zip(tmp_path), tmp_path / "x") / "ADEChallengeData2016"


def _prepare(root: Path, out: Path, **overrides: object) -> dict:
    kwargs: dict = dict(hbird_dir=fx.build_hbird_dir(out.parent / "hb"), hbird_files=HB_ADE,
                        verify_counts=False, sources={"ade20k": {}}, progress=False)
    kwargs.update(overrides)
    return prepare_ade20k_tree(root, out, **kwargs)


def test_prepare_pairs_by_id_and_ignores_stray_files(
    ade_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out" / "ade20k"
    with caplog.at_level(logging.WARNING):
        _prepare(ade_root, out)
    assert ".DS_Store" in caplog.text and "ignoring stray entry" in caplog.text
    assert (out / "splits" / "training.txt").read_bytes() == (
        b"ADE_train_00000001\nADE_train_00000002\n")
    assert (out / "splits" / "validation.txt").read_bytes() == b"ADE_val_00000001\n"
    assert sorted(p.name for p in (out / "images" / "training").iterdir()) == [
        "ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    for sid in fx.ADE_SIZES:
        split = "training" if "_train_" in sid else "validation"
        img = Image.open(out / "masks" / split / f"{sid}.png")
        assert img.mode == "L"
        np.testing.assert_array_equal(np.array(img), fx.ade_label(sid))
        assert (out / "masks" / split / f"{sid}.png").read_bytes() == (
            ade_root / "annotations" / split / f"{sid}.png").read_bytes()
        assert (out / "images" / split / f"{sid}.jpg").read_bytes() == (
            ade_root / "images" / split / f"{sid}.jpg").read_bytes()
    assert set(np.unique(fx.ade_label("ADE_train_00000001"))) == {0, 1, 5, 150}
    assert (out / "splits" / "hbird" / "1_div_128" / "training_128_42.txt").read_bytes() == (
        b"ADE_train_00000002\n")


def test_meta_has_151_classes_and_ignore_zero(ade_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ade20k"
    _prepare(ade_root, out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_classes"] == 151 and meta["ignore_index"] == 0
    names = meta["class_names"]
    assert len(names) == 151 and names[0] == "other" and names[1] == "wall"
    assert names[45] == "chest of drawers" and names[150] == "flag" and names[90] == (
        "television receiver")
    assert tuple(names) == ADE20K_CLASS_NAMES
    assert set(meta["splits"]) == {"training", "validation", "hbird/1_div_128/training_128_42",
                                   "reference_order/hbird/1_div_128/training_128_42"}
    ds = open_dataset("ade20k", out, "validation")
    assert ds.ignore_index == 0 and ds.num_classes == 151
    s = ds[0]
    assert s.image.shape == (40, 56, 3)
    np.testing.assert_array_equal(s.mask, fx.ade_label("ADE_val_00000001"))


def test_rerun_is_byte_identical(ade_root: Path, tmp_path: Path) -> None:
    out_a, out_b = tmp_path / "a" / "ade20k", tmp_path / "b" / "ade20k"
    _prepare(ade_root, out_a)
    _prepare(ade_root, out_b)
    files = sorted(p.relative_to(out_a) for p in out_a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out_b) for p in out_b.rglob("*") if p.is_file())
    for rel in files:
        assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel


def test_missing_annotation_is_named(ade_root: Path, tmp_path: Path) -> None:
    (ade_root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"training/ADE_train_00000002\.png: mask file"):
        _prepare(ade_root, tmp_path / "ade20k")
    assert not (tmp_path / "ade20k").exists()


def test_orphan_annotation_is_logged_not_paired(
    ade_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ann = ade_root / "annotations" / "training"
    shutil.copy(ann / "ADE_train_00000002.png", ann / "ADE_train_00000009.png")
    with caplog.at_level(logging.WARNING):
        _prepare(ade_root, tmp_path / "ade20k")
    assert "ADE_train_00000009.png" in caplog.text
    assert b"00000009" not in (tmp_path / "ade20k" / "splits" / "training.txt").read_bytes()


def test_size_mismatch_and_bad_label_are_named(ade_root: Path, tmp_path: Path) -> None:
    path = ade_root / "annotations" / "validation" / "ADE_val_00000001.png"
    path.write_bytes(encode_label_png(fx.ade_label("ADE_val_00000001")[:, :50]))
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png: mask size \(40, 50\)"):
        _prepare(ade_root, tmp_path / "ade20k")
    bad = fx.ade_label("ADE_val_00000001")
    bad[0, 0] = 151
    path.write_bytes(encode_label_png(bad))
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png: label value\(s\) \[151\]"):
        _prepare(ade_root, tmp_path / "ade20k")


def test_verify_counts_fails_on_fixture(ade_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected rows 1\.\.150"):
        _prepare(ade_root, tmp_path / "ade20k", hbird_dir=None, hbird_files=[],
                 verify_counts=True)
    info = ade_root / "objectInfo150.txt"
    rows = "".join(f"{i}\t0.1\t1\t1\t{ADE20K_CLASS_NAMES[i].replace(' ', ';')}\n"
                   for i in range(1, 151))
    info.write_text("Idx\tRatio\tTrain\tVal\tName\n" + rows)
    with pytest.raises(ValueError, match=r"training: 2 images, expected 20210"):
        _prepare(ade_root, tmp_path / "ade20k", hbird_dir=None, hbird_files=[],
                 verify_counts=True)


def test_object_info_cross_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "objectInfo150.txt"
    path.write_text("Idx\tRatio\tTrain\tVal\tName\n45\t0.1\t1\t1\tchest;of;drawers;bureau\n"
                    "90\t0.1\t1\t1\ttelevision;television;receiver;tv\n")
    with caplog.at_level(logging.WARNING):
        check_object_info(path, verify=False)
    assert caplog.text == ""
    path.write_text("Idx\tRatio\tTrain\tVal\tName\n2\t0.1\t1\t1\twall\n")
    with caplog.at_level(logging.WARNING):
        check_object_info(path, verify=False)
    assert "does not contain class 2 'building'" in caplog.text


def test_end_to_end_http_fetch_prepare_open(http_server: LocalServer, tmp_path: Path) -> None:
    src = fx.build_ade_zip(tmp_path)
    data = src.read_bytes()
    url = http_server.add(f"/{src.name}", data)
    for rel, body in fx.HBIRD_FILES.items():
        http_server.add(f"/fs/{rel}", body, content_type="text/plain")
    cfg = Ade20kConfig(
        archives={"ade20k": ArchiveConfig(filename=src.name, urls=[url],
                                          md5=hashlib.md5(data).hexdigest(), sha1=None,
                                          size=len(data), local_path=None)},
        hbird_sets=HbirdSetsConfig(base_url=http_server.url("/fs"), files=HB_ADE),
        verify_counts=False, cache_dir=None,
    )
    raw_dir, out = tmp_path / "raw" / "ade20k", tmp_path / "prepared" / "ade20k"
    fetch_ade20k(cfg, raw_dir, download=NET, progress=False)
    prepare_ade20k(cfg, raw_dir, out, progress=False)
    ds = open_dataset("ade20k", out, "hbird/1_div_128/training_128_42")
    assert ds.ids == ["ADE_train_00000002"]
    np.testing.assert_array_equal(ds[0].mask, fx.ade_label("ADE_train_00000002"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["ade20k"]
