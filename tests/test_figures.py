"""Tests for neco.figures: palettes, TSV reading, and deterministic non-empty PNGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.figures import (
    IGNORE_RGB,
    class_palette,
    cluster_palette,
    colorize,
    curve_name,
    plot_cluster_maps,
    plot_hbird,
    plot_linear,
    plot_training_curve,
    read_dvclive_tsv,
    read_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_class_palette_is_the_pascal_voc_colour_map() -> None:
    pal = class_palette(256)
    # Published VOC colours: background, aeroplane, bicycle, bird, person (15), tvmonitor (20).
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    assert len({tuple(c) for c in pal}) == 256  # all distinct
    assert np.array_equal(class_palette(21), pal[:21])  # same colour per class in every figure


def test_cluster_palette_distinct_and_deterministic() -> None:
    pal = cluster_palette(500)
    assert pal.shape == (500, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 500
    assert np.array_equal(pal, cluster_palette(500))


def test_colorize_ignore_white_and_range_check() -> None:
    labels = np.array([[0, 1], [255, 2]], dtype=np.uint8)
    rgb = colorize(labels, class_palette(3), ignore_index=255)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[1, 0].tolist() == list(IGNORE_RGB)
    assert rgb[0, 1].tolist() == [128, 0, 0]
    with pytest.raises(ValueError, match=r"ids in \[0, 255\] but the palette has 3 colours"):
        colorize(labels, class_palette(3), ignore_index=None)


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    with Image.open(io.BytesIO(data)) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    return data


def _tsv(path: Path, values: list[float], *, timestamp: bool = True) -> Path:
    """A file as dvclive writes it: header ``[timestamp,] step, <basename>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = ["timestamp"] * timestamp + ["step", path.stem]
    rows = [[str(1000 + i)] * timestamp + [str(i), repr(v)] for i, v in enumerate(values)]
    path.write_text("\n".join("\t".join(r) for r in [head] + rows) + "\n")
    return path


def test_training_curve_from_tsvs_and_arrays(tmp_path: Path) -> None:
    root = tmp_path / "plots" / "metrics"
    _tsv(root / "train" / "loss.tsv", [4.0, 3.6, 3.3])
    _tsv(root / "train" / "lr.tsv", [1e-4, 5e-5, 0.0], timestamp=False)
    _tsv(root / "train" / "momentum.tsv", [0.9995, 0.9998, 1.0])
    curves = read_training_curves(root)
    assert list(curves) == ["train/loss", "train/lr", "train/momentum"]
    assert curves["train/loss"][0].tolist() == [0.0, 1.0, 2.0]
    assert curves["train/loss"][1].tolist() == [4.0, 3.6, 3.3]
    assert curves["train/lr"][1].tolist() == [1e-4, 5e-5, 0.0]
    assert curve_name(root / "train" / "loss.tsv") == "train/loss"
    plot_training_curve(curves, tmp_path / "a.png")
    plot_training_curve(sorted(root.rglob("*.tsv")), tmp_path / "b.png")
    plot_training_curve(curves, tmp_path / "c.png")
    a = _png(tmp_path / "a.png")
    assert a == _png(tmp_path / "b.png") == _png(tmp_path / "c.png")  # deterministic
    plot_training_curve({}, tmp_path / "empty.png")  # nothing logged: still a figure
    _png(tmp_path / "empty.png")
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_read_dvclive_tsv_errors_name_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "loss.tsv"
    bad.write_text("timestamp\tstep\tloss\n1\t0\t4.0\n2\t1\tnan?\n")
    with pytest.raises(ValueError, match=r"loss\.tsv:3: cannot read step/value"):
        read_dvclive_tsv(bad)
    bad.write_text("timestamp\tvalue\n1\t2\n")
    with pytest.raises(ValueError, match=r"loss\.tsv:1: expected a header with a 'step' column"):
        read_dvclive_tsv(bad)


def _demo(n: int = 2) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(n)]
    gts = [rng.integers(0, 7, (28, 28)).astype(np.uint8) for _ in range(n)]
    for gt in gts:
        gt[:3] = 255
    preds = {"init": [rng.integers(0, 7, (28, 28)) for _ in range(n)],
             "neco": [rng.integers(0, 7, (28, 28)) for _ in range(n)]}
    return images, gts, preds


NAMES = ["background", "disk-stripes", "disk-checker", "square-stripes", "square-checker",
         "triangle-stripes", "triangle-checker"]


@pytest.mark.parametrize("plot", [plot_linear, plot_hbird])
def test_class_prediction_figures(tmp_path: Path, plot) -> None:  # type: ignore[no-untyped-def]
    images, gts, preds = _demo()
    plot(images, gts, preds, NAMES, tmp_path / "a.png", ignore_index=255)
    plot(images, gts, preds, NAMES, tmp_path / "b.png", ignore_index=255)
    assert _png(tmp_path / "a.png") == _png(tmp_path / "b.png")
    with Image.open(tmp_path / "a.png") as im:
        colours = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    assert tuple(class_palette(7)[1]) in colours  # class colours drawn unblended
    with pytest.raises(ValueError, match="model 'neco': 1 maps for 2 images"):
        plot(images, gts, {"neco": preds["neco"][:1]}, NAMES, tmp_path / "x.png",
             ignore_index=255)


def test_cluster_map_figure(tmp_path: Path) -> None:
    images, gts, _ = _demo(3)
    rng = np.random.default_rng(1)
    clusters = {"init": [rng.integers(0, 28, (7, 7)) for _ in range(3)],
                "neco": [rng.integers(0, 28, (7, 7)) for _ in range(3)]}
    plot_cluster_maps(images, gts, clusters, tmp_path / "c.png", ignore_index=255)
    _png(tmp_path / "c.png")
    with pytest.raises(ValueError, match="one GT per image"):
        plot_cluster_maps(images, gts[:2], clusters, tmp_path / "x.png", ignore_index=255)
