"""Deterministic PNG figures for the report: training curves and qualitative segmentations.

Rendering uses matplotlib's Agg canvas directly (no pyplot state, no GUI backend) and strips the
PNG ``Software`` tag, so the same inputs give byte-identical files. Colours are consistent across
every figure: class ``c`` always gets the PASCAL VOC colour of index ``c`` (so VOC figures look
like the dataset's own masks), clusters get golden-angle hues, and ignored pixels are white.
Files are written atomically by rank 0 only (``neco.io``).
"""

from __future__ import annotations

import colorsys
import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from neco.io import atomic_path, is_rank_zero

IGNORE_RGB: tuple[int, int, int] = (255, 255, 255)
Curve = tuple[np.ndarray, np.ndarray]


def class_palette(n: int) -> np.ndarray:
    """PASCAL VOC colour map: ``(n, 3)`` uint8, class 0 black, bits of c spread over RGB."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for c in range(n):
        r = g = b = 0
        v = c
        for shift in range(7, -1, -1):
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        out[c] = (r, g, b)
    return out


def cluster_palette(k: int) -> np.ndarray:
    """``(k, 3)`` uint8 well-separated colours for cluster ids (golden-angle hue steps)."""
    out = np.zeros((k, 3), dtype=np.uint8)
    for i in range(k):
        h = (i * 0.618033988749895) % 1.0
        s, v = (0.85, 0.95) if i % 2 == 0 else (0.55, 0.75)
        out[i] = [round(255 * x) for x in colorsys.hsv_to_rgb(h, s, v)]
    return out


def colorize(labels: np.ndarray, palette: np.ndarray, *, ignore_index: int | None) -> np.ndarray:
    """Label map ``(H, W)`` -> RGB ``(H, W, 3)`` uint8; ``ignore_index`` pixels white.

    Raises:
        ValueError: a label outside the palette.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map: expected (H, W), got shape {labels.shape}")
    ignore = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    ids = np.where(ignore, 0, labels).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(palette)):
        raise ValueError(f"label map: ids in [{ids.min()}, {ids.max()}] but the palette has "
                         f"{len(palette)} colours")
    rgb = palette[ids]
    rgb[ignore] = IGNORE_RGB
    return rgb


def read_dvclive_tsv(path: str | os.PathLike[str]) -> Curve:
    """One dvclive metric TSV (columns ``[timestamp,] step, <basename>``) -> (steps, values).

    Raises:
        ValueError: no ``step`` or value column, or a non-numeric cell; names ``path:line``.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{path}:1: expected a header with a 'step' column, got {rows[:1]}")
    header = rows[0]
    names = [h for h in header if h not in ("timestamp", "step")]
    if not names:
        raise ValueError(f"{path}:1: no value column in header {header}")
    i_step, i_val = header.index("step"), header.index(names[-1])
    steps, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            steps.append(float(row[i_step]))
            values.append(float(row[i_val]))
        except (IndexError, ValueError) as err:
            raise ValueError(f"{path}:{line}: cannot read step/value from {row}: {err}") from err
    return np.asarray(steps), np.asarray(values)


def curve_name(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """Metric name of a dvclive TSV: its path below ``root`` without suffix (``train/loss``);
    without ``root``, the last folder and the stem."""
    p = Path(path).with_suffix("")
    return (p.relative_to(root) if root is not None else Path(*p.parts[-2:])).as_posix()


def read_training_curves(root: str | os.PathLike[str]) -> dict[str, Curve]:
    """Every ``*.tsv`` under a dvclive ``plots/metrics`` folder, by metric name (sorted)."""
    return {curve_name(p, root): read_dvclive_tsv(p) for p in sorted(Path(root).rglob("*.tsv"))}


def _save(fig: Figure, out: str | os.PathLike[str]) -> None:
    if not is_rank_zero():
        return
    FigureCanvasAgg(fig)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


def plot_training_curve(curves: Mapping[str, Curve] | Sequence[str | os.PathLike[str]],
                        out: str | os.PathLike[str]) -> None:
    """Loss vs step (all ``*loss*`` series in one panel), then one panel per other series.

    Args:
        curves: ``{name: (steps (T,), values (T,))}``, or dvclive TSV paths to read.
        out: PNG path. With no series the figure says "no training curves logged".
    """
    if not isinstance(curves, Mapping):
        curves = {curve_name(p): read_dvclive_tsv(p) for p in curves}
    losses = [n for n in curves if "loss" in n.lower()]
    panels = ([losses] if losses else []) + [[n] for n in curves if n not in losses]
    fig = Figure(figsize=(6.4, 2.4 * max(1, len(panels))))
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no training curves logged", ha="center", va="center")
        ax.set_axis_off()
    for i, names in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        for name in names:
            steps, values = (np.asarray(a, dtype=np.float64) for a in curves[name])
            ax.plot(steps, values, label=name, linewidth=1.2)
        ax.set_ylabel("loss" if names is losses else names[0])
        ax.grid(True, alpha=0.3)
        if len(names) > 1 or names is losses:
            ax.legend(fontsize=8)
        if i == len(panels) - 1:
            ax.set_xlabel("step")
    fig.tight_layout()
    _save(fig, out)


def _check_lengths(images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                   by_model: Mapping[str, Sequence[np.ndarray]]) -> None:
    if len(images) != len(gts) or not images:
        raise ValueError(f"expected one GT per image and at least one image, got "
                         f"{len(images)} images and {len(gts)} GTs")
    for name, maps in by_model.items():
        if len(maps) != len(images):
            raise ValueError(f"model {name!r}: {len(maps)} maps for {len(images)} images")


def _grid(images: Sequence[np.ndarray], columns: Sequence[tuple[str, Sequence[np.ndarray]]],
          legend: list[Patch], out: str | os.PathLike[str]) -> None:
    """Rows = images; columns = image, then each ``(title, rgb maps)``."""
    n_rows, n_cols = len(images), 1 + len(columns)
    legend_h = 0.35 * ((len(legend) + 5) // 6) if legend else 0.0
    fig = Figure(figsize=(2.2 * n_cols, 2.2 * n_rows + legend_h))
    for r in range(n_rows):
        panels = [("image", np.asarray(images[r], dtype=np.uint8))]
        panels += [(title, maps[r]) for title, maps in columns]
        for c, (title, rgb) in enumerate(panels):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            ax.imshow(rgb, interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    if legend:
        fig.legend(handles=legend, loc="lower center", ncol=min(6, len(legend)), fontsize=7,
                   frameon=False)
    fig.tight_layout(rect=(0.0, legend_h / (2.2 * n_rows + legend_h), 1.0, 1.0))
    _save(fig, out)


def _rgb01(rgb: Sequence[int] | np.ndarray) -> tuple[float, float, float]:
    r, g, b = (int(v) / 255 for v in rgb)
    return (r, g, b)


def _ignore_patch() -> Patch:
    return Patch(facecolor=_rgb01(IGNORE_RGB), edgecolor="black", label="ignore")


def _class_figure(images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                  preds_by_model: Mapping[str, Sequence[np.ndarray]], class_names: Sequence[str],
                  out: str | os.PathLike[str], ignore_index: int) -> None:
    _check_lengths(images, gts, preds_by_model)
    palette = class_palette(max(len(class_names), 1))
    maps = list(gts) + [p for preds in preds_by_model.values() for p in preds]
    present = sorted({int(v) for m in maps for v in np.unique(np.asarray(m))} - {ignore_index})
    columns = [("ground truth", [colorize(g, palette, ignore_index=ignore_index) for g in gts])]
    columns += [(name, [colorize(p, palette, ignore_index=None) for p in preds])
                for name, preds in preds_by_model.items()]
    legend = [Patch(facecolor=_rgb01(palette[c]), edgecolor="black", label=class_names[c])
              for c in present if c < len(class_names)]
    _grid(images, columns, legend + [_ignore_patch()], out)


def plot_linear(images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                preds_by_model: Mapping[str, Sequence[np.ndarray]], class_names: Sequence[str],
                out: str | os.PathLike[str], *, ignore_index: int) -> None:
    """Linear-probe predictions beside image and GT (evaluation.md §2).

    Args:
        images: RGB ``(H, W, 3)`` uint8 per image.
        gts: class ids ``(h, w)`` per image (any resolution; shown stretched to the panel).
        preds_by_model: ``{model: [class ids (h, w) per image]}``, e.g. init / neco.
        class_names: names by class id (legend; only classes present are listed).
        out: PNG path.
        ignore_index: GT label drawn white.
    """
    _class_figure(images, gts, preds_by_model, class_names, out, ignore_index)


def plot_hbird(images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
               preds_by_model: Mapping[str, Sequence[np.ndarray]], class_names: Sequence[str],
               out: str | os.PathLike[str], *, ignore_index: int) -> None:
    """Hummingbird retrieval predictions beside image and GT (evaluation.md §4); args as
    ``plot_linear``."""
    _class_figure(images, gts, preds_by_model, class_names, out, ignore_index)


def plot_cluster_maps(images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                      cluster_maps_by_model: Mapping[str, Sequence[np.ndarray]],
                      out: str | os.PathLike[str], *, ignore_index: int) -> None:
    """Cluster-id maps beside image and GT (evaluation.md §3).

    Args:
        images: RGB ``(H, W, 3)`` uint8 per image.
        gts: class ids ``(h, w)``; drawn with the class palette, ``ignore_index`` white.
        cluster_maps_by_model: ``{model: [cluster ids (h, w) per image]}``; drawn with one
            cluster palette sized by the largest id, so equal ids share a colour across models.
        out: PNG path.
        ignore_index: GT label drawn white.
    """
    _check_lengths(images, gts, cluster_maps_by_model)
    k = 1 + max(int(np.asarray(m).max()) for ms in cluster_maps_by_model.values() for m in ms) \
        if cluster_maps_by_model else 1
    classes, clusters = class_palette(256), cluster_palette(k)
    columns = [("ground truth", [colorize(g, classes, ignore_index=ignore_index) for g in gts])]
    columns += [(name, [colorize(m, clusters, ignore_index=None) for m in maps])
                for name, maps in cluster_maps_by_model.items()]
    _grid(images, columns, [_ignore_patch()], out)
