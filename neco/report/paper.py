"""The paper's published numbers and how our backbones and datasets map onto its labels.

``paper_results.csv`` (evaluation.md §8) holds every number of the NeCo paper (arXiv 2408.11054,
code github.com/vpariza/NeCo) that the report puts beside ours: Tables 1-3, Figure 2 (as quoted
by DIP, arXiv 2506.18463) and the official README. This module parses it strictly and answers
one question: *which published number belongs next to this (backbone, model, protocol, dataset,
setting) of ours?* Backbones the paper never evaluated (the CPU demo's ``vit_tiny_demo``) and
datasets it never used (``synthetic``) map to nothing, and the report prints a dash.

Mapping rules (method.md §12-§13): each backbone's labels are the ``paper`` field of its
registry entry (:class:`neco.models.registry.PaperLabels`; the rules are documented there). The
lookup here:

* method labels are tried in the entry's priority order, then settings, then CSV order;
* README in-context numbers state no memory fraction; they are used for 1/1 only when no
  Figure 2 number exists, and the returned reference carries the CSV note saying so.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neco.models.registry import BACKBONES, PaperLabels

PAPER_COLUMNS: tuple[str, ...] = (
    "table", "method", "backbone", "eval", "dataset", "setting", "value", "source", "note",
)

# Our dataset keys -> the paper's dataset labels.
DATASET_LABELS: dict[str, str] = {
    "voc": "VOC",
    "ade20k": "ADE20K",
    "coco_things": "COCO-Things",
    "coco_stuff": "COCO-Stuff",
}

# Our protocol keys -> the ``eval`` column of the CSV.
PROTOCOL_EVALS: dict[str, str] = {
    "linear": "linear",
    "overcluster": "clustering",
    "hbird": "in_context_hbird",
}

# Short tags printed next to a paper number; the report prints this legend.
TABLE_TAGS: dict[str, str] = {
    "T1a": "T1a",
    "T2": "T2",
    "T3": "T3",
    "in_context": "F2",
    "README": "README",
}
TAG_LEGEND: dict[str, str] = {
    "T1a": "paper Table 1a (clustering)",
    "T2": "paper Table 2 (linear)",
    "T3": "paper Table 3 (other initialisations)",
    "F2": "paper Figure 2 / App. B.3 as quoted by DIP Table 1 (in-context)",
    "README": "official NeCo README (in-context: memory fraction not stated)",
}


class PaperResultsError(ValueError):
    """``paper_results.csv`` is malformed; the message names the file and line."""


@dataclass(frozen=True)
class PaperRow:
    """One published number.

    Attributes:
        table: table id, e.g. ``T2``, ``in_context``, ``README``.
        method: row label, e.g. ``NeCo``, ``DINOv2R``, ``NeCo (init: DINO)``.
        backbone: architecture label, e.g. ``ViT-S/14``; ``-`` if unstated.
        eval: protocol label, e.g. ``linear``, ``clustering``, ``in_context_hbird``.
        dataset: dataset label, e.g. ``VOC``.
        setting: ``-``, ``K=GT``, ``K=500``, ``frac=1/8``, ...
        value: the number as printed (mIoU in percent for the segmentation protocols).
        source: where it was read.
        note: caveats, possibly empty.
        line: 1-based line in the CSV file.
    """

    table: str
    method: str
    backbone: str
    eval: str
    dataset: str
    setting: str
    value: float
    source: str
    note: str
    line: int


def paper_labels(backbone: str) -> PaperLabels | None:
    """The paper's labels of our ``backbone`` (its registry entry), ``None`` if it has none."""
    spec = BACKBONES.get(backbone)
    return None if spec is None else spec.paper


@dataclass(frozen=True)
class PaperRef:
    """A published number chosen for one cell of our tables.

    Attributes:
        value: percent, as printed in the paper.
        label: ``"<method> <arch>"``, e.g. ``NeCo ViT-S/14``.
        tag: short source tag (``TABLE_TAGS``), e.g. ``T2``.
        row: the CSV row it came from.
    """

    value: float
    label: str
    tag: str
    row: PaperRow


def parse_paper_results(text: str, *, source: str) -> list[PaperRow]:
    """Parse the CSV text strictly.

    Args:
        text: the whole file.
        source: file name used in error messages.

    Raises:
        PaperResultsError: wrong header, wrong field count, a non-numeric or non-finite value,
            an empty key field, or a duplicate (table, method, backbone, eval, dataset, setting);
            the message names ``source:line``.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise PaperResultsError(
            f"{source}: empty file; expected header {','.join(PAPER_COLUMNS)}"
        ) from None
    if tuple(header) != PAPER_COLUMNS:
        raise PaperResultsError(
            f"{source}:1: header {','.join(header)!r}; expected {','.join(PAPER_COLUMNS)!r}"
        )
    rows: list[PaperRow] = []
    seen: dict[tuple[str, ...], int] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(PAPER_COLUMNS):
            raise PaperResultsError(
                f"{source}:{line}: {len(fields)} fields; expected {len(PAPER_COLUMNS)} "
                f"({','.join(PAPER_COLUMNS)})"
            )
        rec = dict(zip(PAPER_COLUMNS, fields, strict=True))
        for name in PAPER_COLUMNS[:6]:
            if not rec[name].strip():
                raise PaperResultsError(f"{source}:{line}: empty '{name}' field")
        try:
            value = float(rec["value"])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise PaperResultsError(
                f"{source}:{line}: value {rec['value']!r} is not a finite number"
            )
        key = tuple(rec[name] for name in PAPER_COLUMNS[:6])
        if key in seen:
            raise PaperResultsError(
                f"{source}:{line}: duplicate of line {seen[key]} ({','.join(key)})"
            )
        seen[key] = line
        rows.append(PaperRow(
            table=rec["table"], method=rec["method"], backbone=rec["backbone"],
            eval=rec["eval"], dataset=rec["dataset"], setting=rec["setting"], value=value,
            source=rec["source"], note=rec["note"], line=line,
        ))
    return rows


def load_paper_results(path: str | os.PathLike[str]) -> list[PaperRow]:
    """Read and parse ``paper_results.csv`` (see ``parse_paper_results``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: paper results CSV not found")
    return parse_paper_results(path.read_text(encoding="utf-8"), source=str(path))


def paper_setting(protocol: str, *, k: int | None = None, is_gt: bool = False,
                  fraction: str | None = None) -> tuple[str, ...]:
    """CSV ``setting`` values that match one of our result cells, in priority order.

    Args:
        protocol: ``linear``, ``overcluster`` or ``hbird``.
        k: number of clusters used (overcluster).
        is_gt: whether K equals the number of classes (the paper's ``K=GT``).
        fraction: memory fraction, e.g. ``1/8`` (hbird).
    """
    if protocol == "linear":
        return ("-",)
    if protocol == "overcluster":
        return ("K=GT",) if is_gt else (f"K={k}",)
    if protocol == "hbird":
        # README numbers state no fraction; accept them for the full memory only.
        return (f"frac={fraction}", "-") if fraction == "1/1" else (f"frac={fraction}",)
    return ()


def paper_model_label(backbone: str, role: str) -> str | None:
    """The paper's name for our ``role`` (``init`` / ``neco``) model of ``backbone``, if any."""
    model = paper_labels(backbone)
    labels = _labels(model, role) if model else ()
    return f"{labels[0]} {model.arch}" if model and labels else None


def _labels(model: PaperLabels, role: str) -> tuple[str, ...]:
    return {"init": model.init, "neco": model.neco}.get(role, ())


def lookup(rows: Sequence[PaperRow], *, backbone: str, role: str, protocol: str,
           dataset: str, settings: Sequence[str]) -> PaperRef | None:
    """The paper number for one cell, or None (printed as a dash).

    Args:
        rows: parsed CSV rows.
        backbone: our backbone key, e.g. ``dinov2_vits14_xr``.
        role: ``init`` or ``neco`` (our model names in the metrics JSON).
        protocol: our protocol key.
        dataset: our dataset key, e.g. ``voc``.
        settings: CSV settings to accept, in priority (``paper_setting``).

    Priority: method label (``PaperLabels`` order), then setting, then CSV order, among the
    tables in ``TABLE_TAGS`` only (DIP re-evaluations and legacy README rows are never used).
    """
    model = paper_labels(backbone)
    ds_label = DATASET_LABELS.get(dataset)
    eval_label = PROTOCOL_EVALS.get(protocol)
    if model is None or ds_label is None or eval_label is None:
        return None
    for method in _labels(model, role):
        for setting in settings:
            for row in rows:
                if (row.table in TABLE_TAGS and row.method == method
                        and row.backbone == model.arch and row.eval == eval_label
                        and row.dataset == ds_label and row.setting == setting):
                    return PaperRef(row.value, f"{method} {model.arch}", TABLE_TAGS[row.table], row)
    return None
