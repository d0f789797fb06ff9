"""Stage `crops`: seeded crop boxes for every training image x epoch x view (method.md §2-§3).

    python -m stages.crops --params params.yaml --dataset synthetic \
        --data data/prepared/synthetic --out data/crops/manifest.parquet

Reads params ``seed``, ``crops``, ``train`` (``backbone`` and ``epochs``: null epochs and crop
sizes come from the backbone recipe, resolved exactly as the train stage resolves them). The
training images are the registry's ``unlabelled_split`` of ``--dataset`` (or ``--split``);
without ``--dataset``, ``--split`` and ``--image-dir`` (default ``images/<split>``) name them
inside ``--data``. The manifest's image order is the split list's. Only image headers are read.
Writes the Parquet manifest (``neco.method.manifest``) atomically.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from neco.config.method import CropConfig
from neco.method.manifest import write_manifest_for

PARAMS = ["seed", "data.train", "crops", "train.backbone", "train.epochs"]


def _resolved(params: Path) -> tuple[int, CropConfig, dict[str, Any]]:
    from neco.config import load_value
    from neco.models.recipes import load_training  # the train stage's own resolution

    seed = load_value(params, "seed", int)
    _, crops, resolution = load_training(params)
    return seed, crops, resolution.values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    parser.add_argument("--out", type=Path, required=True, help="manifest .parquet")
    parser.add_argument("--dataset", help="registry name (its images layout and NeCo split)")
    parser.add_argument(
        "--split",
        help="split list splits/<split>.txt (default with --dataset: "
        "the dataset's unlabelled_split)",
    )
    parser.add_argument(
        "--image-dir",
        help="without --dataset: image folder relative to --data (default images/<split>)",
    )
    args = parser.parse_args(argv)
    if args.dataset is None and args.split is None:
        parser.error("give --dataset or --split")

    seed, crops, values = _resolved(args.params)
    if args.dataset is not None:
        from neco.data.registry import get_dataset, open_images

        split = args.split or get_dataset(args.dataset).unlabelled_split
        if split is None:
            raise SystemExit(f"dataset {args.dataset!r} has no split NeCo can train on")
        images = open_images(args.dataset, args.data, split)
    else:
        from neco.data.reader import ImageDataset

        image_dir = args.image_dir or f"images/{args.split}"
        images = ImageDataset(args.data, args.split, image_dir=image_dir, image_ext=".jpg")
    t0 = time.perf_counter()
    rows = write_manifest_for(
        images,
        out=args.out,
        seed=seed,
        epochs=int(values["epochs"]),
        cfg=crops,
        global_size=int(values["global_size"]),
        local_size=int(values["local_size"]),
    )
    print(
        f"[crops] {len(images)} images x {values['epochs']} epochs -> {rows} rows "
        f"in {time.perf_counter() - t0:.1f} s: {args.out}"
    )


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
