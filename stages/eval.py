"""Stage `eval@<protocol>-<dataset>`: one protocol on one dataset for every eval model.

Writes ``reports/metrics/<protocol>/<dataset>.json`` and one example figure; the protocol itself
is :func:`neco.evals.run.evaluate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neco.config import EvalConfig, RuntimeConfig, TrainConfig, load_section, load_value

PARAMS = [
    "seed",
    "train.backbone",
    "train.pos_embed_interp",
    "eval.datasets.{dataset}",
    "eval.models",
    "eval.checkpoint",
    "eval.checkpoint_key",
    "eval.release_revision",
    "eval.features",
    "eval.{protocol}",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--protocol", required=True, choices=["linear", "overcluster", "hbird"])
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="prepared dataset tree of --dataset's source"
    )
    parser.add_argument(
        "--init", type=Path, required=True, help="weights stage output (init model)"
    )
    parser.add_argument(
        "--models", type=Path, required=True, help="train stage output (neco model)"
    )
    parser.add_argument("--features", type=Path, required=True, help="features stage output")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figure", type=Path, required=True)
    parser.add_argument("--timings", type=Path, default=None,
                        help="wall times (not a result: untracked, outside the DVC outputs)")
    args = parser.parse_args(argv)

    seed = load_value(args.params, "seed", int)
    train = load_section(args.params, "train", TrainConfig)
    ev = load_section(args.params, "eval", EvalConfig)
    runtime = load_section(args.params, "runtime", RuntimeConfig)

    from neco.evals.run import evaluate

    evaluate(args.protocol, args.dataset, seed=seed, train=train, ev=ev, data_root=args.data,
             init_dir=args.init, models_dir=args.models, features_dir=args.features, out=args.out,
             figure=args.figure, runtime=runtime, timings=args.timings)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
