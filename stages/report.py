"""Stage `report`: roll up every eval's metrics, write the paper-style tables and the loss plot.

``python -m stages.report --params params.yaml --metrics-dir reports/metrics
--train-summary reports/train/summary.json --train-plots reports/train/plots/metrics
--resolved-config models/neco/resolved_config.json --paper data/paper/paper_results.csv
--pretrain-record models/pretrain/pretrain.json --pretrain-curve reports/pretrain/loss.tsv
--study reports/demo_study.json
--out-metrics reports/metrics.json --out-tables reports/tables.md --out-figures reports/figures``

Reads ``<metrics-dir>/<protocol>/<dataset>.json`` (a protocol that did not run is reported as
"not run"), writes the roll-up (the only declared DVC metrics file), ``tables.md`` and
``<out-figures>/training_loss.png`` and ``pretrain_loss.png``; ``tables.md`` also links the
per-protocol PNGs that the eval stages wrote into ``--out-figures``. The pretraining record and
curve (``pretrain`` stage) and the committed demo study (``bench/demo_study.py``; optional) feed
the "What the demo shows" and "Pretraining" sections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neco.config import load_section, load_value
from neco.config.sections import ReportConfig

PARAMS = ["report", "eval.datasets"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--train-summary", type=Path, required=True)
    parser.add_argument("--train-plots", type=Path, required=True, help="dvclive plots/metrics")
    parser.add_argument("--resolved-config", type=Path, required=True)
    parser.add_argument("--paper", type=Path, required=True, help="paper_results.csv")
    parser.add_argument("--pretrain-record", type=Path, required=True, help="pretrain.json")
    parser.add_argument("--pretrain-curve", type=Path, required=True, help="pretrain loss TSV")
    parser.add_argument("--study", type=Path, default=None, help="demo_study.json (optional)")
    parser.add_argument("--out-metrics", type=Path, required=True)
    parser.add_argument("--out-tables", type=Path, required=True)
    parser.add_argument("--out-figures", type=Path, required=True)
    args = parser.parse_args(argv)

    cfg = load_section(args.params, "report", ReportConfig)
    datasets = load_value(args.params, "eval.datasets", dict)

    from neco.report.build import build_report

    build_report(cfg, datasets=list(datasets), metrics_dir=args.metrics_dir,
                 train_summary=args.train_summary, train_plots=args.train_plots,
                 resolved_config=args.resolved_config, paper=args.paper,
                 pretrain_record=args.pretrain_record, pretrain_curve=args.pretrain_curve,
                 study=args.study,
                 out_metrics=args.out_metrics, out_tables=args.out_tables,
                 out_figures=args.out_figures)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
