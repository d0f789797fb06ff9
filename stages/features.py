"""Stage `features@<dataset>`: val-split patch tokens of every eval model, computed once.

The linear probe (validation every epoch) and clustering both read these; Hummingbird reads them
too when its input size equals ``eval.features.input_size``. Augmented train/memory features
cannot be cached (they change every epoch) and are computed live by the eval stages.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from neco.config import EvalConfig, RuntimeConfig, TrainConfig, load_section

PARAMS = [
    "train.backbone",
    "train.pos_embed_interp",
    "eval.models",
    "eval.checkpoint",
    "eval.checkpoint_key",
    "eval.features",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared")
    parser.add_argument("--init", type=Path, required=True, help="weights stage output (init model)")
    parser.add_argument("--models", type=Path, required=True, help="train stage output dir")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    train = load_section(args.params, "train", TrainConfig)
    ev = load_section(args.params, "eval", EvalConfig)
    runtime = load_section(args.params, "runtime", RuntimeConfig)

    from neco.config.evals import ImageStd
    from neco.data.registry import get_dataset, open_dataset
    from neco.evals import Autocast, extract_val_features
    from neco.evals.cache import save_features
    from neco.evals.models import eval_device, extractor_for, load_eval_backbone

    spec = get_dataset(args.dataset)
    ds = open_dataset(args.dataset, args.data / spec.source, spec.val_split)
    device = eval_device()
    for model in ev.models:
        t0 = time.perf_counter()
        backbone = load_eval_backbone(
            model,
            backbone=train.backbone,
            models_dir=args.models,
            checkpoint=ev.checkpoint,
            checkpoint_key=ev.checkpoint_key,
            pos_embed_interp=train.pos_embed_interp,
            init_dir=args.init,
        )
        tokens = extract_val_features(
            extractor_for(backbone, device),
            ds,
            input_size=ev.features.input_size,
            image_std=ImageStd.correct,
            batch_size=ev.features.batch_size,
            device=device,
            autocast=Autocast.none,
            num_workers=runtime.num_workers,
        )
        meta = {
            "dataset": args.dataset,
            "split": spec.val_split,
            "model": model,
            "backbone": train.backbone,
            "input_size": ev.features.input_size,
            "patch_size": backbone.patch_size,
            "image_std": ImageStd.correct.value,
            "pos_embed_interp": train.pos_embed_interp,
        }
        save_features(args.out / f"{model}.pt", tokens=tokens, ids=list(ds.ids), meta=meta)
        print(f"[features] {args.dataset}/{model}: {tuple(tokens.shape)} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
