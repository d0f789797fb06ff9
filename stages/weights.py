"""Stage `weights`: the initial backbone (official weights, a local file, or a seeded random init).

Resolves ``train.backbone``'s weights once (downloading official files into
``train.weights_cache``), loads them strictly through the backbone's key map and writes the
initial backbone as a timm-loadable safetensors file. Training starts from it and the eval stages
evaluate it as the ``init`` model, so the baseline is exactly the student's starting point.
Where the registry names a paper baseline (``dinov2_vit{s,b}14_xr``: the hub register model
``dinov2_vit{s,b}14_reg``, method.md §13), the same source file is also loaded strictly through
the baseline's key map (registers kept) and written as ``baseline_backbone.safetensors``, the
``baseline`` eval model; ``weights.json`` records both load reports.
For a backbone without published weights the init is the ``pretrain`` stage's self-supervised
backbone (``--pretrain models/pretrain``; checked against its record: same backbone, same
sha256), or the seeded random init where that stage did not pretrain (``pretrain.steps: 0``).
Offline, it fails within seconds (before torch is imported) naming the URL and ``train.weights``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from neco.config import load_subset, load_value
from neco.models.init_weights import (
    BASELINE_FILE,
    INIT_FILE,
    WeightsParams,
    baseline_backbone,
    baseline_weights_source,
    initial_weights_source,
    pretrained_source,
)

PARAMS = ["seed", "train.backbone", "train.weights", "train.weights_cache", "pretrain.steps"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output directory (models/init)")
    parser.add_argument("--pretrain", type=Path, default=None,
                        help="the pretrain stage's output (models/pretrain); None = not used")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    seed = load_value(args.params, "seed", int)
    params = load_subset(args.params, "train", WeightsParams)
    progress = load_value(args.params, "runtime.progress", bool)
    source = initial_weights_source(params, progress=progress)  # fast offline failure
    if args.pretrain is not None:
        steps = load_value(args.params, "pretrain.steps", int)
        source = pretrained_source(args.pretrain, params, steps) or source
    baseline_source = baseline_weights_source(params, source)  # fails before torch, too
    baseline = baseline_backbone(params.backbone)

    from neco.io import write_json
    from neco.models.export import export_backbone
    from neco.models.vit import build_backbone

    backbone = build_backbone(params.backbone, weights=source, cache_dir=None, drop_path_rate=0.0,
                              pos_embed_interp="official", seed=seed)
    export_backbone(backbone, args.out / INIT_FILE, record_pos_embed_interp=False)
    record: dict[str, Any] = {"backbone": params.backbone, "source": source,
                              "load_report": backbone.load_report}
    print(f"[weights] {params.backbone}: {source} -> {args.out / INIT_FILE}")
    if baseline is not None and baseline_source is not None:
        model = build_backbone(baseline, weights=baseline_source, cache_dir=None,
                               drop_path_rate=0.0, pos_embed_interp="official", seed=seed)
        export_backbone(model, args.out / BASELINE_FILE, record_pos_embed_interp=False)
        record["baseline"] = {"backbone": baseline, "file": BASELINE_FILE,
                              "source": baseline_source, "load_report": model.load_report}
        print(f"[weights] paper baseline {baseline}: {baseline_source} -> "
              f"{args.out / BASELINE_FILE}")
    write_json(args.out / "weights.json", record)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
