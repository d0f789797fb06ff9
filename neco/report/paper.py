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

Baselines (:func:`paper_role`, issue 10): the paper's init-labelled rows sit beside the eval
model that *is* the paper's baseline. That is ``init`` (the training start) unless the registry
entry names a ``baseline``: ``dinov2_vit{s,b}14_xr`` trains from the register checkpoint with
its registers dropped, while the paper's "DINOv2R" rows are the hub register model (method.md
§13, presumed), so they sit beside our ``baseline`` eval model (the same weight file loaded as
``dinov2_vit{s,b}14_reg``, 4 registers) and Δ = NeCo − baseline on both sides; the XR ``init``
gets no paper row.

The pairings below are :func:`pairing_table` of the registry and ``paper_results.csv``
(hand-copied here; ``tests/test_baselines.py`` checks that they agree). "Row model" is the
registry architecture the paper row is attributed to, loaded from that backbone's official
weight file (registers in the model in brackets; ``neco``: NeCo trained from it). "Tables": the
CSV tables holding rows the lookup can use (T1a, T2, T3, F2 = Figure 2, README). So every
init-labelled paper row is attributed to exactly one model of ours: "DINOv2R" is
``dinov2_vit{s,b}14_reg`` with its registers, whether it sits beside the ``init`` of the
``_reg`` backbone or the ``baseline`` of the ``_xr`` one (that "DINOv2R" is the register model
is presumed, method.md §13, unverified; DIP measures a 4.3-point higher in-context VOC baseline,
79.4 vs Figure 2's 75.1). Below the table: the usable CSV labels paired with no model of ours
(:data:`UNPAIRED_LABELS`).

| backbone | ours | paper row | tables | row model |
|:---|:---|:---|:---|:---|
| `dinov2_vits14` | `init` | – | – | `dinov2_vits14` (0) |
| `dinov2_vits14` | `neco` | NeCo on DINOv2 ViT-S/14 | README | NeCo of `dinov2_vits14` |
| `dinov2_vits14_reg` | `init` | DINOv2R ViT-S/14 | T1a T2 F2 | `dinov2_vits14_reg` (4) |
| `dinov2_vits14_reg` | `neco` | NeCo on DINOv2R ViT-S/14 | README | NeCo of `dinov2_vits14_reg` |
| `dinov2_vits14_xr` | `baseline` | DINOv2R ViT-S/14 | T1a T2 F2 | `dinov2_vits14_reg` (4) |
| `dinov2_vits14_xr` | `init` | – | – | `dinov2_vits14_xr` (0) |
| `dinov2_vits14_xr` | `neco` | NeCo ViT-S/14 | T1a T2 F2 | NeCo of `dinov2_vits14_xr` |
| `dinov2_vits14_xr` | `neco` | NeCo on DINOv2R-XR ViT-S/14 | README | NeCo of `dinov2_vits14_xr` |
| `dinov2_vitb14` | `init` | – | – | `dinov2_vitb14` (0) |
| `dinov2_vitb14` | `neco` | NeCo on DINOv2 ViT-B/14 | README | NeCo of `dinov2_vitb14` |
| `dinov2_vitb14_reg` | `init` | DINOv2R ViT-B/14 | T2 | `dinov2_vitb14_reg` (4) |
| `dinov2_vitb14_reg` | `neco` | NeCo on DINOv2R ViT-B/14 | README | NeCo of `dinov2_vitb14_reg` |
| `dinov2_vitb14_xr` | `baseline` | DINOv2R ViT-B/14 | T2 | `dinov2_vitb14_reg` (4) |
| `dinov2_vitb14_xr` | `init` | – | – | `dinov2_vitb14_xr` (0) |
| `dinov2_vitb14_xr` | `neco` | NeCo ViT-B/14 | T2 | NeCo of `dinov2_vitb14_xr` |
| `dinov2_vitb14_xr` | `neco` | NeCo on DINOv2R-XR ViT-B/14 | README | NeCo of `dinov2_vitb14_xr` |
| `dino_vits16` | `init` | DINO ViT-S/16 | T1a T2 T3 F2 | `dino_vits16` (0) |
| `dino_vits16` | `neco` | NeCo (init: DINO) ViT-S/16 | T3 | NeCo of `dino_vits16` |
| `dino_vits16` | `neco` | NeCo on DINO ViT-S/16 | README | NeCo of `dino_vits16` |
| `dino_vitb16` | `init` | DINO ViT-B/16 | T2 F2 | `dino_vitb16` (0) |
| `dino_vitb16` | `neco` | – | – | NeCo of `dino_vitb16` |
| `ibot_vits16` | `init` | iBOT ViT-S/16 | T1a T2 T3 | `ibot_vits16` (0) |
| `ibot_vits16` | `neco` | NeCo (init: iBOT) ViT-S/16 | T3 | NeCo of `ibot_vits16` |
| `ibot_vitb16` | `init` | iBOT ViT-B/16 | T2 | `ibot_vitb16` (0) |
| `ibot_vitb16` | `neco` | – | – | NeCo of `ibot_vitb16` |
| `cribo_vits16` | `init` | CrIBo ViT-S/16 | T1a T2 T3 F2 | `cribo_vits16` (0) |
| `cribo_vits16` | `neco` | NeCo (init: CrIBo) ViT-S/16 | T3 | NeCo of `cribo_vits16` |
| `cribo_vitb16` | `init` | CrIBo ViT-B/16 | T2 F2 | `cribo_vitb16` (0) |
| `cribo_vitb16` | `neco` | – | – | NeCo of `cribo_vitb16` |
| `timetuning_vits16` | `init` | TimeT ViT-S/16 | T1a T2 T3 F2 | `timetuning_vits16` (0) |
| `timetuning_vits16` | `neco` | NeCo (init: TimeT) ViT-S/16 | T3 | NeCo of `timetuning_vits16` |
| `timetuning_vits16` | `neco` | NeCo on TimeT ViT-S/16 | README | NeCo of `timetuning_vits16` |
| `leopart_vits16` | `init` | Leopart ViT-S/16 | T3 F2 | `leopart_vits16` (0) |
| `leopart_vits16` | `neco` | NeCo (init: Leopart) ViT-S/16 | T3 | NeCo of `leopart_vits16` |
| `leopart_vits16` | `neco` | NeCo on Leopart ViT-S/16 | README | NeCo of `leopart_vits16` |

* CrOC ViT-S/16 (T1a T2 F2): not registered.
* DINOv2R (DIP re-eval) ViT-B/14 (F2): DIP's re-evaluation, not a number of the paper.
* DINOv2R (DIP re-eval) ViT-S/14 (F2): DIP's re-evaluation, not a number of the paper.
* Hummingbird ViT-B/16 (F2): not registered.
* Leopart ViT-B/16 (F2): not registered (ours: ViT-S/16 only).
* MAE ViT-B/16 (T2): not registered.
* NeCo (DIP re-eval) ViT-B/14 (F2): DIP's re-evaluation, not a number of the paper.
* NeCo (DIP re-eval) ViT-S/14 (F2): DIP's re-evaluation, not a number of the paper.
* SelfPatch ViT-S/16 (F2): not registered.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neco.models.registry import BACKBONES, PaperLabels, get_spec

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


def paper_role(backbone: str, model: str) -> str | None:
    """The :class:`PaperLabels` role (``init`` / ``neco``) printed beside our eval ``model``.

    ``neco`` -> ``neco``. The ``init`` rows go beside our ``baseline`` when the registry entry
    names one (then our ``init`` gets no paper row), else beside our ``init``. Other models
    (and ``baseline`` of a backbone without one) get none.
    """
    spec = BACKBONES.get(backbone)
    has_baseline = spec is not None and spec.baseline is not None
    if model == "neco":
        return "neco"
    if model == "baseline":
        return "init" if has_baseline else None
    if model == "init":
        return None if has_baseline else "init"
    return None


def reference_model(backbone: str) -> str:
    """Our eval model the paper's init rows and Δ refer to: ``baseline`` or ``init``."""
    spec = BACKBONES.get(backbone)
    return "baseline" if spec is not None and spec.baseline is not None else "init"


#: CSV labels (``"<method> <arch>"``) of rows the lookup could use that no model of ours is
#: paired with, and why. ``tests/test_baselines.py`` checks this is exactly that set.
UNPAIRED_LABELS: dict[str, str] = {
    "CrOC ViT-S/16": "not registered",
    "DINOv2R (DIP re-eval) ViT-B/14": "DIP's re-evaluation, not a number of the paper",
    "DINOv2R (DIP re-eval) ViT-S/14": "DIP's re-evaluation, not a number of the paper",
    "Hummingbird ViT-B/16": "not registered",
    "Leopart ViT-B/16": "not registered (ours: ViT-S/16 only)",
    "MAE ViT-B/16": "not registered",
    "NeCo (DIP re-eval) ViT-B/14": "DIP's re-evaluation, not a number of the paper",
    "NeCo (DIP re-eval) ViT-S/14": "DIP's re-evaluation, not a number of the paper",
    "SelfPatch ViT-S/16": "not registered",
}


@dataclass(frozen=True)
class Pairing:
    """One of our (backbone, eval model) cells and the paper rows printed beside it.

    Attributes:
        backbone: registry key.
        model: our eval model (``baseline``, ``init``, ``neco``).
        label: the paper's ``"<method> <arch>"``, ``None`` if no paper row sits beside it.
        tags: the tables holding usable rows of that label (:data:`TABLE_TAGS` values).
        row_model: registry name of the architecture evaluated (``neco``: trained from it).
        registers: register tokens in that architecture.
    """

    backbone: str
    model: str
    label: str | None
    tags: tuple[str, ...]
    row_model: str
    registers: int


def _usable(row: PaperRow) -> bool:
    return (row.table in TABLE_TAGS and row.eval in PROTOCOL_EVALS.values()
            and row.dataset in DATASET_LABELS.values())


def _tags(rows: Sequence[PaperRow], method: str, arch: str) -> tuple[str, ...]:
    found = {TABLE_TAGS[r.table] for r in rows
             if _usable(r) and r.method == method and r.backbone == arch}
    return tuple(t for t in dict.fromkeys(TABLE_TAGS.values()) if t in found)


def paper_pairings(rows: Sequence[PaperRow]) -> list[Pairing]:
    """Every (backbone, eval model) of a backbone with paper labels and its paper rows.

    One :class:`Pairing` per label (a model whose role has none, or no role, gets one with
    ``label=None``), in registry order, then ``baseline``, ``init``, ``neco``.
    """
    out: list[Pairing] = []
    for spec in BACKBONES.values():
        if spec.paper is None:
            continue
        models = (["baseline"] if spec.baseline is not None else []) + ["init", "neco"]
        for model in models:
            arch = get_spec(spec.baseline) if model == "baseline" and spec.baseline else spec
            role = paper_role(spec.name, model)
            labels = _labels(spec.paper, role) if role else ()
            for method in labels or (None,):
                out.append(Pairing(
                    backbone=spec.name, model=model,
                    label=None if method is None else f"{method} {spec.paper.arch}",
                    tags=() if method is None else _tags(rows, method, spec.paper.arch),
                    row_model=arch.name, registers=arch.num_registers,
                ))
    return out


def unpaired_labels(rows: Sequence[PaperRow]) -> dict[str, tuple[str, ...]]:
    """Usable CSV labels no :func:`paper_pairings` entry uses -> the tables holding them."""
    paired = {p.label for p in paper_pairings(rows)}
    out: dict[str, tuple[str, ...]] = {}
    for r in rows:
        label = f"{r.method} {r.backbone}"
        if _usable(r) and label not in paired and label not in out:
            out[label] = _tags(rows, r.method, r.backbone)
    return dict(sorted(out.items()))


def pairing_table(rows: Sequence[PaperRow]) -> str:
    """The module docstring's pairing table and unpaired-label list, as markdown."""
    lines = ["| backbone | ours | paper row | tables | row model |",
             "|:---|:---|:---|:---|:---|"]
    for p in paper_pairings(rows):
        model = (f"NeCo of `{p.row_model}`" if p.model == "neco"
                 else f"`{p.row_model}` ({p.registers})")
        lines.append(f"| `{p.backbone}` | `{p.model}` | {p.label or '–'} | "
                     f"{' '.join(p.tags) or '–'} | {model} |")
    lines.append("")
    for label, tags in unpaired_labels(rows).items():
        reason = UNPAIRED_LABELS.get(label, "(no reason recorded)")
        lines.append(f"* {label} ({' '.join(tags)}): {reason}.")
    return "\n".join(lines)
