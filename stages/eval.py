"""Stage `eval_<protocol>@<dataset>`: one protocol on one dataset for every eval model.

One shim for all protocols (STYLE §3 step 5): it opens the splits, loads the cached val
features and (for protocols that need augmented train/memory features) the live frozen
backbone, calls the pure protocol function, and writes ``reports/metrics/<protocol>/<ds>.json``
plus one figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from neco.config import EvalConfig, RuntimeConfig, TrainConfig, load_section, load_value

PARAMS = [
    "seed",
    "train.backbone",
    "train.pos_embed_interp",
    "eval.models",
    "eval.checkpoint",
    "eval.checkpoint_key",
    "eval.features",
    "eval.{protocol}",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--protocol", required=True, choices=["linear", "overcluster", "hbird"])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared")
    parser.add_argument("--init", type=Path, required=True, help="weights stage output (init model)")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figure", type=Path, required=True)
    args = parser.parse_args(argv)

    seed = load_value(args.params, "seed", int)
    train = load_section(args.params, "train", TrainConfig)
    ev = load_section(args.params, "eval", EvalConfig)
    runtime = load_section(args.params, "runtime", RuntimeConfig)
    cfg = getattr(ev, args.protocol)

    from neco.data.registry import get_dataset, open_dataset
    from neco.evals import PROTOCOLS
    from neco.evals.cache import load_features
    from neco.evals.inputs import draw_figure, hbird_subsets
    from neco.evals.models import eval_device, extractor_for, load_eval_backbone
    from neco.io import write_json

    spec = get_dataset(args.dataset)
    root = args.data / spec.source
    val = open_dataset(args.dataset, root, spec.val_split)
    device = eval_device()
    results = {}
    for model in ev.models:
        t0 = time.perf_counter()
        cached = None
        if cfg.input_size == ev.features.input_size:
            cached = load_features(args.features / f"{model}.pt", ids=list(val.ids), input_size=cfg.input_size)
        if args.protocol == "overcluster":
            if cached is None:
                raise SystemExit("eval.overcluster.input_size must equal eval.features.input_size")
            grid = int(round(cached.shape[1] ** 0.5))  # square inputs: s*s tokens
            result = PROTOCOLS["overcluster"].run(cached, val, cfg, grid=grid)
        else:
            backbone = load_eval_backbone(
                model,
                backbone=train.backbone,
                models_dir=args.models,
                checkpoint=ev.checkpoint,
                checkpoint_key=ev.checkpoint_key,
                pos_embed_interp=train.pos_embed_interp,
                init_dir=args.init,
            )
            extractor = extractor_for(backbone, device)
            train_ds = open_dataset(args.dataset, root, spec.train_split)
            if args.protocol == "linear":
                result = PROTOCOLS["linear"].run(
                    extractor, train_ds, val, cfg, device=device, seed=seed,
                    val_features=cached, num_workers=runtime.num_workers,
                )
            else:
                if cfg.image_std.value != "correct" or (
                    cfg.autocast.value == "fp16_on_cuda" and device.type == "cuda"
                ):
                    cached = None  # the cache is fp32 with the correct std: recompute queries
                result = PROTOCOLS["hbird"].run(
                    extractor, train_ds, val, cfg, device=device, seed=seed,
                    query_features=cached, subsets=hbird_subsets(root),
                    num_workers=runtime.num_workers,
                )
        results[model] = result
        headline = "n/a" if result.miou is None else f"{100 * result.miou:.2f}"
        print(f"[eval] {args.protocol}/{args.dataset}/{model}: mIoU {headline} "
              f"({time.perf_counter() - t0:.1f} s)")

    write_json(args.out, {
        "protocol": args.protocol,
        "dataset": args.dataset,
        "backbone": train.backbone,
        "models": {m: r.to_dict() for m, r in results.items()},
    })
    draw_figure(args.protocol, results, class_names=list(val.class_names),
                ignore_index=val.ignore_index, out=args.figure)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
