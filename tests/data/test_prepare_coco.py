"""Tests for the COCO prepare: class maps (§4.2/§4.3), masks on known pixels, the 10 % subset
rule (§4.6), layout and metadata (§9), determinism, error messages, end to end via HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data.sources import coco_categories as cc
from neco.data.sources.coco import (
    CocoConfig,
    ConvertTrain,
    LinearSubsetConfig,
    linear_subset_ids,
    linear_subset_name,
    prepare_coco,
)
from neco.download.archives import ArchiveConfig
from neco.download.fetch import fetch_archives
from tests.fixtures.coco_in100 import (
    EXPECTED_STUFF,
    EXPECTED_THINGS,
    TRAIN_IDS,
    VAL_IDS,
    build_coco_archives,
)
from tests.fixtures.http_server import LocalServer, http_server_fixture  # noqa: F401

# Independent transcription of datasets.md §4.2 / §4.3: super-class -> category ids.
THINGS_SPEC = {
    "accessory": [27, 28, 31, 32, 33], "animal": list(range(16, 26)),
    "appliance": [78, 79, 80, 81, 82], "electronic": [72, 73, 74, 75, 76, 77],
    "food": list(range(52, 62)), "furniture": [62, 63, 64, 65, 67, 70],
    "indoor": list(range(84, 91)), "kitchen": [44, 46, 47, 48, 49, 50, 51],
    "outdoor": [10, 11, 13, 14, 15], "person": [1], "sports": list(range(34, 44)),
    "vehicle": list(range(2, 10)),
}
STUFF_SPEC = {
    "building": [95, 96, 128, 151, 158, 166], "ceiling": [102, 103],
    "floor": [101, 114, 115, 116, 117, 118], "food-stuff": [121, 122, 153, 170],
    "furniture-stuff": [98, 107, 108, 110, 112, 123, 130, 133, 156, 161, 165],
    "ground": [111, 125, 126, 136, 140, 144, 145, 147, 149, 154, 159],
    "plant": [94, 97, 119, 124, 129, 134, 142, 163, 169], "raw-material": [100, 132, 139, 143],
    "sky": [106, 157], "solid": [127, 135, 150, 160, 162, 182],
    "structural": [99, 113, 138, 146, 164],
    "textile": [92, 93, 104, 105, 109, 131, 137, 141, 152, 167, 168],
    "wall": [171, 172, 173, 174, 175, 176, 177], "water": [120, 148, 155, 178, 179],
    "window": [180, 181],
}


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _cfg(arcs: dict[str, Path], **over: object) -> CocoConfig:
    archives = {k: ArchiveConfig(filename=p.name, urls=[], md5=_md5(p), sha1=None, size=None,
                                 local_path=None) for k, p in arcs.items()}
    base = dict(archives=archives, linear_subset=LinearSubsetConfig(fraction=0.5, seed=400),
                convert_train=ConvertTrain.SUBSET, regenerate_stuff_from_json=True,
                verify_counts=False, cache_dir=None)
    return CocoConfig(**{**base, **over})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_coco_archives(tmp_path_factory.mktemp("coco_raw"))


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coco_prep") / "coco"
    prepare_coco(_cfg(raw), raw["val2017"].parent, out, progress=False)
    return out


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L", path
        return np.array(img)


def test_mapping_tables_match_spec() -> None:
    assert len(cc.PANOPTIC_CATEGORIES) == 133 and len(cc.STUFF_CATEGORIES) == 92
    assert sum(t for *_, t in cc.PANOPTIC_CATEGORIES) == 80
    t_lut, t_names = cc.things_lut(cc.panoptic_categories_json(), source="t")
    s_lut, s_names = cc.stuff_lut(cc.stuff_categories_json(), source="s")
    assert t_names == list(THINGS_SPEC) == list(cc.THINGS_CLASS_NAMES)
    assert s_names == list(STUFF_SPEC) == list(cc.STUFF_CLASS_NAMES)
    want_t = np.full(256, 255, np.uint8)
    for idx, ids in enumerate(THINGS_SPEC.values()):
        want_t[ids] = idx
    want_s = np.full(256, 255, np.uint8)
    for idx, ids in enumerate(STUFF_SPEC.values()):
        want_s[ids] = idx
    np.testing.assert_array_equal(t_lut, want_t)  # every stuff/void/unknown id -> 255
    np.testing.assert_array_equal(s_lut, want_s)  # 0, 183, unknown -> 255
    for cid, idx in [(1, 9), (18, 1), (3, 11), (184, 255), (0, 255), (200, 255)]:
        assert t_lut[cid] == idx
    for cid, idx in [(0, 255), (92, 11), (106, 8), (149, 5), (183, 255)]:
        assert s_lut[cid] == idx


def test_things_lut_sorts_supercategories_alphabetically() -> None:
    cats = [{"id": 5, "isthing": 1, "supercategory": "zebra"},
            {"id": 6, "isthing": 1, "supercategory": "apple"},
            {"id": 7, "isthing": 0, "supercategory": "aaa-stuff"}]
    lut, names = cc.things_lut(cats, source="x")
    assert names == ["apple", "zebra"] and (lut[5], lut[6], lut[7]) == (1, 0, 255)
    with pytest.raises(ValueError, match="x: category .* 'isthing'"):
        cc.things_lut([{"id": 1, "supercategory": "a"}], source="x")


def test_linear_subset_rule() -> None:
    ids = [f"{i:012d}" for i in range(1000, 0, -7)]  # unsorted input, 143 ids
    got = linear_subset_ids(ids, fraction=0.1, seed=400)
    base = sorted(ids)
    perm = np.random.Generator(np.random.PCG64(400)).permutation(len(base))
    assert got == sorted(base[i] for i in perm[:14])  # floor(14.3)
    assert got == sorted(got) and len(set(got)) == 14
    assert linear_subset_ids(list(reversed(ids)), fraction=0.1, seed=400) == got
    assert linear_subset_ids(ids, fraction=0.1, seed=401) != got
    big = [str(i) for i in range(118_287)]
    assert len(linear_subset_ids(big, fraction=0.1, seed=400)) == 11_828
    assert len(linear_subset_ids([str(i) for i in range(290)], fraction=0.1, seed=0)) == 29
    assert linear_subset_name(0.1, 400) == "train2017_10pct_seed400"
    assert linear_subset_name(0.5, 1) == "train2017_50pct_seed1"
    with pytest.raises(ValueError, match="fraction"):
        linear_subset_ids(ids, fraction=0.0, seed=400)


def test_masks_on_known_pixels(prepared: Path) -> None:
    subset = (prepared / "splits/train2017_50pct_seed400.txt").read_text().split()
    assert len(subset) == 1
    for split, ids in (("val2017", VAL_IDS), ("train2017", subset)):
        for i in ids:
            np.testing.assert_array_equal(_mask(prepared / f"things/masks/{split}/{i}.png"),
                                          EXPECTED_THINGS[i], err_msg=f"things {i}")
            np.testing.assert_array_equal(_mask(prepared / f"stuff/masks/{split}/{i}.png"),
                                          EXPECTED_STUFF[i], err_msg=f"stuff {i}")
    # convert_train: subset -> only the subset's train masks exist.
    assert sorted(p.stem for p in (prepared / "things/masks/train2017").iterdir()) == subset


def test_layout_splits_and_meta(prepared: Path, raw: dict[str, Path]) -> None:
    assert (prepared / "splits/train2017.txt").read_bytes() == (
        "\n".join(sorted(TRAIN_IDS)) + "\n").encode()
    assert (prepared / "splits/val2017.txt").read_text().split() == sorted(VAL_IDS)
    for split, ids in (("train2017", TRAIN_IDS), ("val2017", VAL_IDS)):
        assert sorted(p.stem for p in (prepared / "images" / split).iterdir()) == sorted(ids)
    with zipfile.ZipFile(raw["val2017"]) as zf:
        assert (prepared / "images/val2017/000000000139.jpg").read_bytes() == zf.read(
            "val2017/000000000139.jpg")  # kept as delivered
    cats = json.loads((prepared / "categories/panoptic_categories.json").read_text())
    assert cats == cc.panoptic_categories_json()
    stuff = json.loads((prepared / "categories/stuff_categories.json").read_text())
    assert stuff == cc.stuff_categories_json()
    things = json.loads((prepared / "meta_things.json").read_text())
    assert things["class_names"] == list(cc.THINGS_CLASS_NAMES)
    assert (things["num_classes"], things["ignore_index"]) == (12, 255)
    assert set(things["splits"]) == {"val2017", "train2017_50pct_seed400"}
    assert things["sources"]["val2017"]["checksum"] == "md5:" + _md5(raw["val2017"])
    assert things["stats"]["stuff_crosscheck_val2017"] == {
        "images": 1, "pixels": 48, "mismatched_pixels": 0}
    assert things["stats"]["category_tables_match_spec"] is True
    meta_stuff = json.loads((prepared / "meta_stuff.json").read_text())
    assert meta_stuff["class_names"] == list(cc.STUFF_CLASS_NAMES)
    split_bytes = (prepared / "splits/val2017.txt").read_bytes()
    assert meta_stuff["splits"]["val2017"]["md5"] == hashlib.md5(split_bytes).hexdigest()
    meta = json.loads((prepared / "meta.json").read_text())
    assert set(meta["splits"]) == {"train2017", "val2017", "train2017_50pct_seed400"}
    assert not (prepared.parent / ".coco.extract").exists()  # scratch removed


def test_deterministic_and_convert_all(raw: dict[str, Path], prepared: Path,
                                       tmp_path: Path) -> None:
    out = tmp_path / "coco"
    prepare_coco(_cfg(raw, convert_train=ConvertTrain.ALL), raw["val2017"].parent, out,
                 progress=False)
    for i in TRAIN_IDS:
        np.testing.assert_array_equal(_mask(out / f"things/masks/train2017/{i}.png"),
                                      EXPECTED_THINGS[i])
    files = sorted(p.relative_to(prepared) for p in prepared.rglob("*.png"))
    assert files and all((out / f).read_bytes() == (prepared / f).read_bytes() for f in files)
    assert (out / "splits/train2017_50pct_seed400.txt").read_bytes() == (
        prepared / "splits/train2017_50pct_seed400.txt").read_bytes()


def test_verify_counts_in_production_mode(raw: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 118287"):
        prepare_coco(_cfg(raw, verify_counts=True), raw["val2017"].parent, tmp_path / "c",
                     progress=False)
    assert not (tmp_path / "c").exists()


def test_missing_member_is_named(raw: dict[str, Path], tmp_path: Path) -> None:
    rd = tmp_path / "raw"
    shutil.copytree(raw["val2017"].parent, rd)
    with zipfile.ZipFile(raw["stuff"]) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    with zipfile.ZipFile(io.BytesIO(members["annotations/stuff_val2017_pixelmaps.zip"])) as zf:
        inner = {n: zf.read(n) for n in zf.namelist() if not n.endswith("285.png")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, data in inner.items():
            zf.writestr(n, data)
    members["annotations/stuff_val2017_pixelmaps.zip"] = buf.getvalue()
    with zipfile.ZipFile(rd / raw["stuff"].name, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(FileNotFoundError, match="000000000285.png"):
        prepare_coco(_cfg(raw), rd, tmp_path / "c", progress=False)
    (rd / raw["panoptic"].name).unlink()
    with pytest.raises(FileNotFoundError, match="datasets.coco.archives.panoptic"):
        prepare_coco(_cfg(raw), rd, tmp_path / "c", progress=False)


def test_end_to_end_http_fetch_prepare_open(raw: dict[str, Path], tmp_path: Path,
                                            http_server: LocalServer) -> None:
    from neco.data.registry import open_dataset, open_images

    arcs = {k: ArchiveConfig(filename=p.name, urls=[http_server.add(f"/coco/{p.name}",
                                                                    p.read_bytes())],
                             md5=_md5(p), sha1=None, size=p.stat().st_size, local_path=None)
            for k, p in raw.items()}
    got = fetch_archives(arcs, tmp_path / "raw", cache_dir=None, progress=False, retries=0,
                         timeout_s=5.0, backoff_s=0.0, param_prefix="datasets.coco.archives")
    assert set(got) == set(raw)
    cfg = _cfg(raw, linear_subset=LinearSubsetConfig(fraction=1.0, seed=400))
    prepare_coco(cfg, tmp_path / "raw", tmp_path / "coco", progress=False)
    # The registry's COCO views expect the paper split name; the fixture uses fraction 1.0.
    (tmp_path / "coco/splits/train2017_10pct_seed400.txt").write_bytes(
        (tmp_path / "coco/splits/train2017_100pct_seed400.txt").read_bytes())
    things = open_dataset("coco_things", tmp_path / "coco", "val2017")
    sample = things[list(things.ids).index("000000000139")]
    assert sample.image.shape == (6, 8, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, EXPECTED_THINGS["000000000139"])
    stuff = open_dataset("coco_stuff", tmp_path / "coco", "train2017_10pct_seed400")
    assert list(stuff.ids) == sorted(TRAIN_IDS)
    np.testing.assert_array_equal(stuff[0].mask, EXPECTED_STUFF[sorted(TRAIN_IDS)[0]])
    assert len(open_images("coco", tmp_path / "coco", "train2017")) == 2


def test_fixture_archives_are_deterministic(raw: dict[str, Path], tmp_path: Path) -> None:
    again = build_coco_archives(tmp_path)
    assert {k: _md5(p) for k, p in again.items()} == {k: _md5(p) for k, p in raw.items()}
