"""The result tables of ``reports/tables.md``, laid out like the paper's (STYLE P11).

Paper: arXiv 2408.11054 (code github.com/vpariza/NeCo). Clustering like Table 1a (columns
dataset × K, mean ± std over k-means seeds), linear like Table 2 (columns datasets), in-context
retrieval like Figure 2 (columns memory fractions, rows dataset × model). Each of our rows
(init, NeCo, Δ = NeCo − init) is followed by the paper's row for the same backbone, from
``neco.report.paper`` (a dash where none applies). mIoU is in percent with 1 decimal. Every number
of ours carries a footnote ``[n]`` with its fingerprint; ``⚑`` marks settings that differ from the
paper setting (``neco.report.settings``).

For a backbone with a paper baseline (``dinov2_vit{s,b}14_xr``; ``neco.report.paper.paper_role``)
the paper's init rows ("DINOv2R") follow our ``baseline`` row (the hub register model, registers
kept) and both Δ rows are NeCo − baseline; our ``init`` (XR: registers dropped, the training
start) is a second, labelled baseline with its own Δ and no paper row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neco.models.registry import BACKBONES
from neco.report.collect import MODEL_ORDER, EvalEntry, fraction_sort_key, gt_result, ordered
from neco.report.paper import (
    DATASET_LABELS,
    PaperRef,
    PaperRow,
    lookup,
    paper_model_label,
    paper_role,
    paper_setting,
    reference_model,
)
from neco.report.settings import ROLE_NAMES, Notes

DASH = "–"
TITLES = {
    "overcluster": "Clustering: K = C (Hungarian) and overclustering (like paper Table 1a)",
    "linear": "Linear segmentation (like paper Table 2)",
    "hbird": "In-context retrieval, Hummingbird, by memory fraction (like paper Figure 2)",
}

Row = list[str]


@dataclass(frozen=True)
class Column:
    """One numeric column of a result table.

    Attributes:
        entry: the eval file the column's numbers come from.
        run: which run of each model's ``results`` (``key``, ``value``), or None for the
            primary ``miou``.
        paper: ``paper_setting(...)`` strings for the paper lookup (empty: no paper number).
        show_std: print ``± std`` when the run has one.
    """

    entry: EvalEntry
    run: tuple[str, Any] | None
    paper: tuple[str, ...]
    show_std: bool


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
             numeric: bool = True) -> list[str]:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned when
    ``numeric`` (else left-aligned)."""
    rest = "---:" if numeric else ":---"
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] + [rest] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def fmt_value(value: Any) -> str:
    """Scalars for the summary/config tables: floats with 4 significant digits."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _ds(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def _ours(col: Column, model: str, notes: Notes) -> tuple[str, float | None]:
    """Our cell text (percent, footnote) and its value as a fraction, or a dash."""
    res = col.entry.models.get(model)
    if res is None:
        return DASH, None
    if col.run is None:
        value, std = res["miou"], None
    else:
        key, want = col.run
        run = next((r for r in res["results"] if r[key] == want), None)
        if run is None:
            return DASH, None
        value, std = run["mean"], run.get("std") if col.show_std else None
    if value is None:
        return DASH, None
    text = f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
    return text + notes.mark(col.entry, model), float(value)


def _name(backbone: str, model: str) -> str:
    """A model's row name: ``ROLE_NAMES``; with a paper baseline, both baselines say which."""
    spec = BACKBONES.get(backbone)
    if spec is None or spec.baseline is None or model not in ("baseline", "init"):
        return ROLE_NAMES.get(model, model)
    if model == "baseline":
        return f"baseline `{spec.baseline}`"
    return f"init ({_init_note(backbone)})"


def _init_note(backbone: str) -> str:
    """What the ``init`` of a backbone with a paper baseline is (XR: its registers dropped)."""
    spec = BACKBONES[backbone]
    return "XR: registers dropped" if spec.key_map == "dinov2_xr" else "not the paper's baseline"


def _delta(values: Mapping[str, list[float | None]], a: str, b: str) -> list[str]:
    return [f"{100 * (y - x):+.1f}" if x is not None and y is not None else DASH
            for x, y in zip(values[a], values[b], strict=True)]


def _role_rows(cols: Sequence[Column], models: Sequence[str], paper_rows: Sequence[PaperRow],
               notes: Notes) -> list[Row]:
    """Per model our row then the paper's (``paper_role``), then the Δ rows.

    Δ NeCo − reference (``baseline`` where the backbone has one, else ``init``) with the paper's
    Δ below it; with a baseline also Δ NeCo − init (ours only: the paper has no XR-init row).
    """
    rows: list[Row] = []
    values: dict[str, list[float | None]] = {}
    refs: dict[str, list[PaperRef | None]] = {}
    backbone = cols[0].entry.backbone if cols else ""
    for model in models:
        name = _name(backbone, model)
        cells = [_ours(col, model, notes) for col in cols]
        rows.append([f"{name} (ours)"] + [text for text, _ in cells])
        values[model] = [value for _, value in cells]
        role = paper_role(backbone, model) if model in MODEL_ORDER else None
        if role is not None:
            refs[model] = [lookup(paper_rows, backbone=backbone, role=role,
                                  protocol=col.entry.protocol, dataset=col.entry.dataset,
                                  settings=col.paper) for col in cols]
            rows.append([f"{name}, paper: {paper_model_label(backbone, role) or DASH}"]
                        + [f"{r.value:.1f} ({r.tag})" if r else DASH for r in refs[model]])
    ref = reference_model(backbone)
    if ref in values and "neco" in values:
        rows.append([f"Δ NeCo − {_name(backbone, ref)} (ours)"] + _delta(values, ref, "neco"))
        rows.append(["Δ, paper"] + [
            f"{b.value - a.value:+.1f}" if a and b else DASH
            for a, b in zip(refs[ref], refs["neco"], strict=True)])
    if ref != "init" and "init" in values and "neco" in values:
        rows.append([f"Δ NeCo − {_name(backbone, 'init')} (ours)"]
                    + _delta(values, "init", "neco"))
    return rows


def _by_backbone(entries: Sequence[EvalEntry]) -> dict[str, list[EvalEntry]]:
    groups: dict[str, list[EvalEntry]] = {}
    for e in entries:
        groups.setdefault(e.backbone, []).append(e)
    return groups


def _models(entries: Sequence[EvalEntry]) -> list[str]:
    return ordered([m for e in entries for m in e.models], MODEL_ORDER)


def _backbone_line(backbone: str) -> str:
    init, neco = paper_model_label(backbone, "init"), paper_model_label(backbone, "neco")
    spec = BACKBONES.get(backbone)
    if spec is None or spec.baseline is None:
        return (f"Backbone `{backbone}`; paper rows: init = {init or DASH}, "
                f"NeCo = {neco or DASH}.")
    regs = BACKBONES[spec.baseline].num_registers if spec.baseline in BACKBONES else 0
    return (f"Backbone `{backbone}`; paper rows: baseline = {init or DASH} beside our "
            f"`baseline` (`{spec.baseline}`: the same weight file with its {regs} registers), "
            f"NeCo = {neco or DASH}; Δ = NeCo − baseline. Our `init` ({_init_note(backbone)}) is "
            "the training start: a second baseline, with its own Δ and no paper row.")


def _cluster_columns(entry: EvalEntry) -> list[tuple[Column, str, str | None]]:
    """(column, header, capped note): K = C (Hungarian) first, then by requested K."""
    ks: dict[int, tuple[int, bool, bool]] = {}
    for res in entry.models.values():
        gt = gt_result(res)
        for run in res["results"]:
            is_gt = gt is not None and run["k_requested"] == gt["k_requested"]
            under = bool(run.get("under_clustering", False))
            ks.setdefault(run["k_requested"], (run["k_used"], is_gt, under))
    out = []
    for kr, (ku, is_gt, under) in sorted(ks.items(), key=lambda kv: (not kv[1][1], kv[0])):
        head = f"{_ds(entry.dataset)} K={ku}" + (" (GT)" if is_gt else "")
        head += f" (K={kr} capped)" if ku != kr else ""
        head += " ⚑ under-clustering (K < C)" if under else ""
        col = Column(entry, ("k_requested", kr),
                     paper_setting("overcluster", k=ku, is_gt=is_gt), show_std=True)
        out.append((col, head, f"{_ds(entry.dataset)} K={kr}→{ku}" if ku != kr else None))
    return out


def cluster_section(entries: Sequence[EvalEntry], paper_rows: Sequence[PaperRow],
                    notes: Notes) -> list[str]:
    """Like Table 1a: columns dataset × K, mean ± std over k-means seeds."""
    lines: list[str] = []
    for backbone, group in _by_backbone(entries).items():
        cols = [c for e in group for c in _cluster_columns(e)]
        table = _role_rows([c for c, _, _ in cols], _models(group), paper_rows, notes)
        capped = [note for _, _, note in cols if note]
        lines += [_backbone_line(backbone), ""]
        lines += md_table(["model"] + [h for _, h, _ in cols], table)
        lines += ["", "mean ± std over k-means seeds."
                  + (f" Capped K (fewer points than clusters): {', '.join(capped)}."
                     if capped else ""), ""]
    return lines


def linear_section(entries: Sequence[EvalEntry], paper_rows: Sequence[PaperRow],
                   notes: Notes) -> list[str]:
    """Like Table 2: columns datasets; best-val and last epoch listed below."""
    lines: list[str] = []
    for backbone, group in _by_backbone(entries).items():
        cols = [Column(e, None, paper_setting("linear"), show_std=False) for e in group]
        lines += [_backbone_line(backbone), ""]
        lines += md_table(["model"] + [_ds(e.dataset) for e in group],
                          _role_rows(cols, _models(group), paper_rows, notes))
        lines.append("")
        for e in group:
            for model in ordered(list(e.models), MODEL_ORDER):
                res = e.models[model]
                if {"miou_best_val", "miou_last", "best_epoch"} <= set(res):
                    lines.append(f"- {_ds(e.dataset)} {ROLE_NAMES.get(model, model)}: best-val "
                                 f"{100 * res['miou_best_val']:.1f} (epoch {res['best_epoch']}), "
                                 f"last {100 * res['miou_last']:.1f}")
        lines.append("")
    return lines


def hbird_section(entries: Sequence[EvalEntry], paper_rows: Sequence[PaperRow],
                  notes: Notes) -> list[str]:
    """Like Figure 2: columns memory fractions as run, rows dataset × model, mean ± std."""
    lines: list[str] = []
    for backbone, group in _by_backbone(entries).items():
        fracs = sorted({r["fraction"] for e in group for res in e.models.values()
                        for r in res["results"]}, key=fraction_sort_key)
        rows: list[Row] = []
        for e in group:
            cols = [Column(e, ("fraction", f), paper_setting("hbird", fraction=f),
                           show_std=f != "1/1") for f in fracs]
            rows += [[f"{_ds(e.dataset)} · {row[0]}"] + row[1:]
                     for row in _role_rows(cols, _models([e]), paper_rows, notes)]
        lines += [_backbone_line(backbone), ""]
        lines += md_table(["dataset · model"] + [f"memory {f}" for f in fracs], rows)
        lines += ["", "mean ± std over the low-shot subsets (one run at 1/1).", ""]
        for e in group:
            for model in ordered(list(e.models), MODEL_ORDER):
                res = e.models[model]
                derived = [r["fraction"] for r in res["results"]
                           if any(run.get("derived_subset") for run in r["runs"])]
                recall = res.get("recall_at_k")
                lines.append(f"- {_ds(e.dataset)} {ROLE_NAMES.get(model, model)}: nn="
                             f"{res.get('nn_backend', DASH)}, recall@k="
                             f"{DASH if recall is None else fmt_value(recall)}"
                             + (f"; derived subsets (not the HB file sets) at {', '.join(derived)}"
                                if derived else ""))
        lines.append("")
    return lines


def other_section(entries: Sequence[EvalEntry], notes: Notes) -> list[str]:
    """Protocols this report does not know: primary mIoU per dataset, no paper numbers."""
    lines: list[str] = []
    for backbone, group in _by_backbone(entries).items():
        cols = [Column(e, None, (), show_std=False) for e in group]
        lines += [f"Backbone `{backbone}`.", ""]
        lines += md_table(["model"] + [_ds(e.dataset) for e in group],
                          _role_rows(cols, _models(group), (), notes))
        lines.append("")
    return lines
