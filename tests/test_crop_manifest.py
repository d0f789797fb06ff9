"""Crop manifest: schema, constraint on every row, determinism, I/O validation, index, stage."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neco.config.method import CropConfig
from neco.method.crops import CropSamplingError, overlap_boxes
from neco.method.manifest import (
    SCHEMA,
    ManifestError,
    ManifestIndex,
    arrow_schema,
    box_columns,
    build_manifest,
    read_manifest,
    write_manifest,
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
_SIDES = [96, 112, 128, 144, 160]
IMAGES = [(f"demo_{i + 1:06d}", _SIDES[i % 5], _SIDES[(i * 3 + 1) % 5]) for i in range(24)]
BOX = ["x", "y", "w", "h"]


def _build(
    images: list[tuple[str, int, int]] = IMAGES,
    *,
    epochs: int = 3,
    seed: int = 400,
    cfg: CropConfig = CFG,
) -> pd.DataFrame:
    return build_manifest(images, epochs=epochs, seed=seed, cfg=cfg, global_size=112, local_size=48)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return _build()


def test_rows_order_and_types(df: pd.DataFrame) -> None:
    assert len(df) == 3 * 24 * 6
    keys = df[["epoch", "image_index", "view"]].to_numpy()
    np.testing.assert_array_equal(
        keys, np.array([(e, i, v) for e in range(3) for i in range(24) for v in range(6)])
    )
    assert list(df.columns) == list(SCHEMA) + box_columns(2)
    for name, tp in SCHEMA.items():
        if tp == pa.string():
            assert pd.api.types.is_string_dtype(df[name]), name
        else:
            assert df[name].dtype == np.dtype(tp.to_pandas_dtype()), name
    for name in box_columns(2):
        assert df[name].dtype == np.float64
    assert (df["is_global"] == (df["view"] < 2)).all()
    assert (df["out_size"] == np.where(df["view"] < 2, 112, 48)).all()
    assert df["image_id"].tolist()[:: 6 * 1][:24] == [i for i, _, _ in IMAGES]


def test_boxes_inside_image_and_constraint_on_every_row(df: pd.DataFrame) -> None:
    x, y, w, h = (df[f"crop_{k}"].to_numpy() for k in BOX)
    assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (h >= 1).all()
    assert (x + w <= df["img_w"]).all() and (y + h <= df["img_h"]).all()
    rects = df[[f"crop_{k}" for k in BOX]].to_numpy().reshape(-1, 6, 4)
    area = (df["img_w"] * df["img_h"]).to_numpy().reshape(-1, 6)[:, 0]

    def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        dx = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
        dy = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
        return np.clip(dx, 0, None) * np.clip(dy, 0, None)

    assert (overlap(rects[:, 1], rects[:, 0]) > 0.02 * area).all()
    for v in range(2, 6):
        for g in range(2):
            assert (overlap(rects[:, v], rects[:, g]) > 0.01 * area).all()
    # every loss box is non-empty, in both frames
    for g in range(2):
        for frame in ("view", "global"):
            b = df[[f"inter_{frame}_g{g}_{c}" for c in ("x1", "y1", "x2", "y2")]].to_numpy()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_box_columns_equal_geometry(df: pd.DataFrame) -> None:
    rects = df[[f"crop_{k}" for k in BOX]].to_numpy().reshape(-1, 6, 4)
    gc, all_ = overlap_boxes(rects, np.array([112, 112, 48, 48, 48, 48]), num_global=2)
    for g in range(2):
        view = (
            df[[f"inter_view_g{g}_{c}" for c in ("x1", "y1", "x2", "y2")]]
            .to_numpy()
            .reshape(-1, 6, 4)
        )
        glob = (
            df[[f"inter_global_g{g}_{c}" for c in ("x1", "y1", "x2", "y2")]]
            .to_numpy()
            .reshape(-1, 6, 4)
        )
        np.testing.assert_array_equal(view, all_[:, :, g])
        np.testing.assert_array_equal(glob, gc[:, g])
    # the (0, 1) overlap in crop 1's frame, seen from both rows
    v0 = df[df["view"] == 0][[f"inter_global_g1_{c}" for c in ("x1", "y1", "x2", "y2")]].to_numpy()
    v1 = df[df["view"] == 1][[f"inter_view_g0_{c}" for c in ("x1", "y1", "x2", "y2")]].to_numpy()
    np.testing.assert_array_equal(v0, v1)


def test_determinism_and_independence(df: pd.DataFrame, tmp_path: Path) -> None:
    pd.testing.assert_frame_equal(df, _build())
    write_manifest(df, tmp_path / "a.parquet")
    write_manifest(_build(), tmp_path / "b.parquet")
    md5 = [hashlib.md5((tmp_path / f"{n}.parquet").read_bytes()).hexdigest() for n in "ab"]
    assert md5[0] == md5[1]
    other = _build(seed=401)
    assert not np.array_equal(other["crop_x"].to_numpy(), df["crop_x"].to_numpy())
    # an image's boxes depend only on (seed, epoch, image index), not on the other images
    sub = _build(IMAGES[:5])
    cols = [f"crop_{k}" for k in BOX]
    np.testing.assert_array_equal(sub[cols].to_numpy(), df[df["image_index"] < 5][cols].to_numpy())


def test_round_trip_keeps_frame_and_metadata(df: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "crops" / "manifest.parquet"
    write_manifest(df, path)
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, df)
    meta = back.attrs["neco.crop_manifest"]
    assert meta["seed"] == 400 and meta["epochs"] == 3 and meta["num_global"] == 2
    assert meta["global_size"] == 112 and meta["local_size"] == 48
    assert pq.read_schema(path).equals(arrow_schema(2), check_metadata=False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.parquet"]


def test_reader_names_missing_and_mistyped_column(df: pd.DataFrame, tmp_path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table.drop_columns(["inter_global_g1_y2"]), tmp_path / "missing.parquet")
    with pytest.raises(ManifestError, match=r"missing\.parquet.*'inter_global_g1_y2'"):
        read_manifest(tmp_path / "missing.parquet")
    idx = table.schema.get_field_index("crop_w")
    wrong = table.set_column(idx, "crop_w", table["crop_w"].cast(pa.float64()))
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    with pytest.raises(ManifestError, match=r"wrong\.parquet.*'crop_w'.*double.*expected int32"):
        read_manifest(tmp_path / "wrong.parquet")
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "absent.parquet")
    with pytest.raises(ManifestError, match="out_size"):
        write_manifest(df.drop(columns=["out_size"]), tmp_path / "x.parquet")


def test_index_get(df: pd.DataFrame) -> None:
    index = ManifestIndex(df)
    assert (index.num_epochs, index.num_views, index.num_global, len(index)) == (3, 6, 2, 24)
    assert index.image_ids == [i for i, _, _ in IMAGES]
    assert index.metadata["seed"] == 400 and index.metadata["local_size"] == 48
    rects, sizes, gc, all_ = index.get(2, 7)
    rows = df[(df["epoch"] == 2) & (df["image_index"] == 7)]
    np.testing.assert_array_equal(rects, rows[[f"crop_{k}" for k in BOX]].to_numpy())
    np.testing.assert_array_equal(sizes, [112, 112, 48, 48, 48, 48])
    assert gc.shape == (2, 6, 4) and all_.shape == (6, 2, 4)
    ref_gc, ref_all = overlap_boxes(rects, sizes, num_global=2)
    np.testing.assert_array_equal(gc, ref_gc)
    np.testing.assert_array_equal(all_, ref_all)
    shuffled = ManifestIndex(df.sample(frac=1.0, random_state=0))
    np.testing.assert_array_equal(shuffled.get(2, 7)[2], gc)
    with pytest.raises(IndexError, match="epoch 3"):
        index.get(3, 0)
    with pytest.raises(ManifestError, match="full grid"):
        ManifestIndex(df.iloc[:-1])


def test_retry_cap_error_names_image() -> None:
    cfg = replace(CFG, min_intersection=0.9, second_global_factor=0.01, max_retries=2)
    with pytest.raises(CropSamplingError, match="demo_000001.*epoch 0"):
        _build(IMAGES[:1], cfg=cfg)


def test_demo_scale_is_fast() -> None:
    images = [(f"demo_{i:06d}", _SIDES[i % 5], _SIDES[(i // 5) % 5]) for i in range(96)]
    t0 = time.process_time()
    df = _build(images, epochs=10)
    seconds = time.process_time() - t0
    assert len(df) == 96 * 10 * 6
    assert seconds < 10.0, f"{seconds:.1f} s CPU for the demo manifest"


def test_stage_run_and_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import crops as stage

    data = tmp_path / "prepared"
    (data / "images" / "trainaug").mkdir(parents=True)
    (data / "splits").mkdir()
    sizes = {"demo_000001": (96, 128), "demo_000002": (160, 112), "demo_000003": (112, 112)}
    for i, (w, h) in sizes.items():
        Image.new("RGB", (w, h)).save(data / "images" / "trainaug" / f"{i}.jpg")
    (data / "splits" / "trainaug.txt").write_text("".join(f"{i}\n" for i in sizes))
    values = {"epochs": 2, "global_size": 112, "local_size": 48}
    monkeypatch.setattr(stage, "_resolved", lambda params: (400, CFG, values))
    out = tmp_path / "crops" / "manifest.parquet"
    stage.main(
        ["--params", "unused.yaml", "--data", str(data), "--split", "trainaug", "--out", str(out)]
    )
    got = read_manifest(out)
    expected = build_manifest(
        [(i, w, h) for i, (w, h) in sizes.items()],
        epochs=2,
        seed=400,
        cfg=CFG,
        global_size=112,
        local_size=48,
    )
    pd.testing.assert_frame_equal(got, expected)


def test_stage_with_registry_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dataset synthetic` reads the registry's NeCo split of the prepared layout."""
    registry = pytest.importorskip("neco.data.registry")
    from stages import crops as stage

    spec = registry.get_dataset("synthetic")
    split = spec.unlabelled_split
    ids = ["demo_000001", "demo_000002"]
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    image_dir = registry.open_images("synthetic", tmp_path, split).image_dir
    image_dir.mkdir(parents=True)
    for k, i in enumerate(ids):
        Image.new("RGB", (96 + 16 * k, 112)).save(image_dir / f"{i}{spec.image_ext}")
    values = {"epochs": 1, "global_size": 112, "local_size": 48}
    monkeypatch.setattr(stage, "_resolved", lambda params: (0, CFG, values))
    out = tmp_path / "manifest.parquet"
    stage.main(
        ["--params", "-", "--dataset", "synthetic", "--data", str(tmp_path), "--out", str(out)]
    )
    got = read_manifest(out)
    assert got["image_id"].unique().tolist() == ids
    assert got.groupby("image_id")["img_w"].first().tolist() == [96, 112]
