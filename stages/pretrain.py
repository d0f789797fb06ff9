"""Stage `pretrain`: a self-supervised init for a backbone without published weights.

    python -m stages.pretrain --params params.yaml --out models/pretrain \
        --metrics reports/pretrain/metrics.json --curve reports/pretrain/loss.tsv \
        --timings reports/timings/pretrain.json

NeCo post-pretrains a backbone whose patch neighbours already mean something; the paper's inits
are self-supervised. For ``train.backbone`` without official weights (``vit_tiny_demo``) and
``train.weights: null``, this trains one label-free on ``pretrain.num_images`` synthetic images
of generator seed ``pretrain.generator_seed`` (disjoint from the NeCo train/eval images), with
``pretrain.objective`` (default MaskFeat masked-HOG regression; ``neco.pretrain``), and writes
``pretrained_backbone.safetensors``, which the ``weights`` stage turns into the init. Otherwise
(published weights, a ``train.weights`` file, ``pretrain.steps: 0``) it writes only the record,
saying why. Outputs: ``pretrain.json`` (the record: backbone, objective, losses, sha256 of the
file; written last), the metrics (first/last loss and, for masked-HOG, the loss as a fraction of
its mean-prediction floor: below 1 = it learned) and the per-step loss curve (a DVC plot).
Wall time goes to ``--timings`` (not an output). It runs on one CPU thread (see ``main``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from neco.config import load_section, load_subset, load_value, to_plain
from neco.config.pretrain import Objective, PretrainConfig
from neco.models.init_weights import (
    PRETRAIN_FILE,
    PRETRAIN_RECORD,
    WeightsParams,
    pretrain_skip_reason,
)

PARAMS = ["pretrain", "train.backbone", "train.weights", "datasets.synthetic.generator"]


def _curve_tsv(rows: list[dict[str, float]], floor_scale: float | None) -> str:
    """``step, loss`` [, ``mean_floor``: the loss of predicting the batch-mean HOG, scaled to
    the loss's masked + ``visible_weight`` x visible terms] as TSV."""
    cols = ["step", "loss"] + (["mean_floor"] if floor_scale is not None else [])
    lines = ["\t".join(cols)]
    for r in rows:
        vals = [f"{int(r['step'])}", f"{r['loss']:.6g}"]
        if floor_scale is not None:
            vals.append(f"{r['loss_cls'] * floor_scale:.6g}")
        lines.append("\t".join(vals))
    return "\n".join(lines) + "\n"


def _read_curve(path: Path) -> list[dict[str, float]]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, map(float, line.split("\t")), strict=True)) for line in lines[1:]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--curve", type=Path, required=True, help="loss curve TSV (plot)")
    parser.add_argument("--timings", type=Path, default=None, help="wall time JSON")
    args = parser.parse_args(argv)

    cfg = load_section(args.params, "pretrain", PretrainConfig)
    weights = load_subset(args.params, "train", WeightsParams)
    reason = pretrain_skip_reason(weights, cfg.steps)

    from neco.io import sha256_file, write_json, write_text

    for stale in (args.out / PRETRAIN_RECORD, args.out / PRETRAIN_FILE, args.metrics, args.curve):
        stale.unlink(missing_ok=True)  # nothing of an earlier run survives a failure
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"backbone": weights.backbone, "pretrained": reason is None}
    metrics: dict[str, Any] = {"pretrained": reason is None, "steps": 0}
    t0 = time.perf_counter()
    floor_scale = 1 + cfg.visible_weight if cfg.objective is Objective.MASKED_HOG else None
    if reason is not None:
        record["reason"] = reason
        write_text(args.curve, _curve_tsv([], floor_scale))
        print(f"[pretrain] nothing to do: {reason}")
    else:
        import torch

        from neco.data.sources.synthetic import SyntheticSourceConfig
        from neco.pretrain import run_pretraining

        # One intra-op thread: CPU training results depend on the thread count (the order of
        # float sums), so one thread gives the same init on every machine, and the committed
        # study's (reports/demo_study.md: measured single-threaded; 2 threads drift by ~2 mIoU).
        torch.set_num_threads(1)
        generator = load_section(args.params, "datasets.synthetic", SyntheticSourceConfig)
        progress = load_value(args.params, "runtime.progress", bool)
        with tempfile.TemporaryDirectory() as tmp:  # the full curve holds timings: not an output
            raw_curve = Path(tmp) / "curve.tsv"
            summary = run_pretraining(
                cfg, backbone=weights.backbone, generator=generator.generator,
                out_path=args.out / PRETRAIN_FILE, curve_path=raw_curve,
                log_every=max(1, cfg.steps // 20) if progress or cfg.steps >= 20 else 0,
            )  # fmt: skip
            rows = _read_curve(raw_curve)
        write_text(args.curve, _curve_tsv(rows, floor_scale))
        metrics.update(steps=cfg.steps, loss_first=summary["loss_first"],
                       loss_last=summary["loss_last"])  # fmt: skip
        if floor_scale is not None:
            # loss_cls is the MSE of predicting the batch-mean HOG; the loss sums the masked and
            # (visible_weight x) visible terms, each floored by it: < 1 means it learned.
            tenth = max(1, len(rows) // 10)
            floor = sum(r["loss_cls"] for r in rows[-tenth:]) / tenth * floor_scale
            metrics["loss_last_over_floor"] = summary["loss_last"] / floor
        record.update(config=to_plain(cfg), objective=cfg.objective.value, file=PRETRAIN_FILE,
                      sha256=sha256_file(args.out / PRETRAIN_FILE),
                      generator_seed=cfg.generator_seed, num_images=cfg.num_images,
                      **{k: v for k, v in metrics.items() if k != "pretrained"})  # fmt: skip
        print(f"[pretrain] {weights.backbone}: {cfg.objective.value}, {cfg.steps} steps, loss "
              f"{summary['loss_first']:.3f} -> {summary['loss_last']:.3f}: "
              f"{args.out / PRETRAIN_FILE}")  # fmt: skip
    write_json(args.metrics, metrics)
    write_json(args.out / PRETRAIN_RECORD, record)  # last: its presence means the stage finished
    if args.timings is not None:
        write_json(args.timings, {"stage": "pretrain", "wall_s": time.perf_counter() - t0,
                                  "steps": metrics["steps"]})  # fmt: skip


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
