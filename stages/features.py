"""Stage `features@<dataset>`: val-split patch tokens of every eval model, computed once.

The linear probe (validation every epoch) and clustering both read these; Hummingbird reads them
too when its input size equals ``eval.features.input_size``. Augmented train/memory features
cannot be cached (they change every epoch) and are computed live by the eval stages. The models
are ``eval.models`` plus the paper's ``baseline`` where the backbone has one
(:func:`neco.evals.models.eval_models`): ``<out>/baseline.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neco.config import RuntimeConfig, load_section
from neco.models.recipes import load_eval

PARAMS = [
    "train.backbone",
    "train.pos_embed_interp",
    "eval.datasets.{dataset}",
    "eval.models",
    "eval.checkpoint",
    "eval.checkpoint_key",
    "eval.release_revision",
    "eval.features",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="prepared dataset tree of --dataset's source"
    )
    parser.add_argument(
        "--init", type=Path, required=True, help="weights stage output (init and baseline models)"
    )
    parser.add_argument("--models", type=Path, required=True, help="train stage output dir")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    train, ev = load_eval(args.params)  # recipe and paper-per-backbone values filled
    runtime = load_section(args.params, "runtime", RuntimeConfig)

    from neco.evals.features import cache_features

    cache_features(args.dataset, train=train, ev=ev, data_root=args.data, init_dir=args.init,
                   models_dir=args.models, out_dir=args.out, runtime=runtime)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
