"""The report stage's library entry: metrics files in; ``metrics.json``, ``tables.md`` and the
loss plot out."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neco.config.sections import ReportConfig
from neco.figures import plot_training_curve, read_training_curves
from neco.io import write_json, write_text
from neco.report.collect import PROTOCOL_ORDER, ReportInputError, load_metrics, rollup
from neco.report.demo import demo_section
from neco.report.document import render_tables
from neco.report.paper import load_paper_results

LOSS_FIGURE = "training_loss.png"
PRETRAIN_FIGURE = "pretrain_loss.png"


def read_pretrain_curve(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``pretrain`` stage's loss TSV (``step``, ``loss`` [, ``mean_floor``]) as curves."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretraining loss curve not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t") if lines else []
    if head[:2] != ["step", "loss"]:
        raise ReportInputError(f"{path}: expected a TSV with columns step, loss; got {head}")
    try:
        rows = [[float(v) for v in line.split("\t")] for line in lines[1:] if line]
    except ValueError as err:
        raise ReportInputError(f"{path}: non-numeric value: {err}") from err
    if not rows:  # the stage did not pretrain: the figure says "no training curves logged"
        return {}
    steps = [r[0] for r in rows]
    names = {"loss": "pretrain loss", "mean_floor": "loss of predicting the mean HOG (floor)"}
    return {names.get(h, h): (np.asarray(steps), np.asarray([r[i] for r in rows]))
            for i, h in enumerate(head) if i}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportInputError(f"{path}: invalid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ReportInputError(f"{path}: expected a JSON object ({what})")
    return obj


def _link(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def build_report(
    cfg: ReportConfig,
    *,
    datasets: Sequence[str],
    metrics_dir: Path,
    train_summary: Path,
    train_plots: Path,
    resolved_config: Path,
    paper: Path,
    out_metrics: Path,
    out_tables: Path,
    out_figures: Path,
    pretrain_record: Path,
    pretrain_curve: Path,
    study: Path | None = None,
    protocols: Sequence[str] = PROTOCOL_ORDER,
) -> dict[str, Any]:
    """Roll up exactly the metrics files the params declare and write the report outputs.

    Only ``<metrics_dir>/<protocol>/<dataset>.json`` for the declared ``datasets`` and
    ``protocols`` is read: a file left over from a dataset no longer in ``eval.datasets`` is
    never rolled up, and a declared one that is missing is an error naming it.

    ``study`` (``reports/demo_study.json``) is optional: without it the demo section prints no
    seed spread.

    Returns:
        The roll-up written to ``out_metrics``.
    """
    entries = load_metrics(metrics_dir, datasets=datasets, protocols=protocols)
    summary = _read_json(train_summary, "training summary")
    resolved = _read_json(resolved_config, "resolved training config")
    paper_rows = load_paper_results(paper)
    pretrain = _read_json(pretrain_record, "pretraining record")
    pretrain_curves = read_pretrain_curve(pretrain_curve)
    study_obj = _read_json(study, "demo study") if study is not None and study.is_file() else None
    if train_plots.is_dir():
        curves = read_training_curves(train_plots)
    elif summary.get("steps") == 0:  # train.max_steps = 0 (evaluate a checkpoint): no curves
        curves = {}
    else:
        raise FileNotFoundError(f"{train_plots}: dvclive plots directory not found (the "
                                f"training summary reports {summary.get('steps')} steps)")

    loss_png = out_figures / LOSS_FIGURE
    plot_training_curve(curves, loss_png)
    figures = [out_figures / f"{p}_{d}.png" for p in protocols for d in datasets]
    start = out_tables.parent
    pretrain_png = out_figures / PRETRAIN_FIGURE
    plot_training_curve(pretrain_curves, pretrain_png)
    metrics = rollup(entries, summary, train_source=str(train_summary))
    write_json(out_metrics, metrics)
    steps = summary.get("steps")
    demo = demo_section(entries, dataset=datasets[0], pretrain=pretrain, study=study_obj,
                        resolved=resolved, steps=steps if isinstance(steps, int) else -1,
                        ) if len(datasets) == 1 else []
    write_text(out_tables, render_tables(
        entries, train_summary=summary, resolved_config=resolved, paper_rows=paper_rows,
        cfg=cfg, loss_figure=_link(loss_png, start),
        figures=[_link(p, start) for p in sorted(figures) if p.is_file()],
        pretrain=pretrain, pretrain_figure=_link(pretrain_png, start), demo=demo,
    ))
    print(f"[report] {len(entries)} eval file(s), {len(metrics)} roll-up leaves -> "
          f"{out_metrics}, {out_tables}")
    return metrics
