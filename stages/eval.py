"""Stage `eval@<protocol>-<dataset>`: one protocol on one dataset for every eval model.

Writes ``reports/metrics/<protocol>/<dataset>.json`` and one example figure; the protocol itself
is :func:`neco.evals.run.evaluate`. The eval models are ``eval.models`` plus, for a backbone with a
paper baseline (``dinov2_vit{s,b}14_xr``), the ``baseline`` model
(:func:`neco.evals.models.eval_models`; it depends on ``train.backbone``, already declared).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neco.config import RuntimeConfig, load_section, load_value
from neco.models.recipes import load_eval

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
        "--init", type=Path, required=True, help="weights stage output (init and baseline models)"
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
    train, ev = load_eval(args.params)  # recipe and paper-per-backbone values filled
    runtime = load_section(args.params, "runtime", RuntimeConfig)

    from neco.evals.run import evaluate
    from neco.show import stage_config_record

    config = stage_config_record(args.params, f"eval_{args.protocol}@{args.dataset}")

    evaluate(args.protocol, args.dataset, seed=seed, train=train, ev=ev, data_root=args.data,
             init_dir=args.init, models_dir=args.models, features_dir=args.features, out=args.out,
             figure=args.figure, runtime=runtime, timings=args.timings,
             config=config)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
