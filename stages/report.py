"""Stage `report`: roll up every eval's metrics, write the paper-style tables and the loss plot.

``python -m stages.report --params params.yaml --metrics-dir reports/metrics
--train-summary reports/train/summary.json --train-plots reports/train/plots/metrics
--resolved-config models/neco/resolved_config.json --paper data/paper/paper_results.csv
--out-metrics reports/metrics.json --out-tables reports/tables.md --out-figures reports/figures``

Reads ``<metrics-dir>/<protocol>/<dataset>.json`` (a protocol that did not run is reported as
"not run"), writes the roll-up (the only declared DVC metrics file), ``tables.md`` and
``<out-figures>/training_loss.png``; ``tables.md`` also links the per-protocol PNGs that the
eval stages wrote into ``--out-figures``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from neco.config import load_section
from neco.config.sections import ReportConfig
from neco.io import write_json, write_text
from neco.report.collect import ReportInputError, load_metrics_dir, rollup
from neco.report.document import render_tables
from neco.report.figures import plot_training_curve, read_training_curves
from neco.report.paper import load_paper_results

PARAMS = ["report"]
LOSS_FIGURE = "training_loss.png"


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--train-summary", type=Path, required=True)
    parser.add_argument("--train-plots", type=Path, required=True, help="dvclive plots/metrics")
    parser.add_argument("--resolved-config", type=Path, required=True)
    parser.add_argument("--paper", type=Path, required=True, help="paper_results.csv")
    parser.add_argument("--out-metrics", type=Path, required=True)
    parser.add_argument("--out-tables", type=Path, required=True)
    parser.add_argument("--out-figures", type=Path, required=True)
    args = parser.parse_args(argv)

    cfg = load_section(args.params, "report", ReportConfig)
    entries = load_metrics_dir(args.metrics_dir)
    summary = _read_json(args.train_summary, "training summary")
    resolved = _read_json(args.resolved_config, "resolved training config")
    paper_rows = load_paper_results(args.paper)
    if not args.train_plots.is_dir():
        raise FileNotFoundError(f"{args.train_plots}: dvclive plots directory not found")

    loss_png = args.out_figures / LOSS_FIGURE
    plot_training_curve(read_training_curves(args.train_plots), loss_png)
    others = sorted(p for p in args.out_figures.glob("*.png") if p.name != LOSS_FIGURE)
    start = args.out_tables.parent
    metrics = rollup(entries, summary, train_source=str(args.train_summary))
    write_json(args.out_metrics, metrics)
    write_text(args.out_tables, render_tables(
        entries, train_summary=summary, resolved_config=resolved, paper_rows=paper_rows,
        cfg=cfg, loss_figure=_link(loss_png, start), figures=[_link(p, start) for p in others],
    ))
    print(f"[report] {len(entries)} eval file(s), {len(metrics)} roll-up leaves -> "
          f"{args.out_metrics}, {args.out_tables}")


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
