"""Stage `train`: NeCo post-pretraining of ``train.backbone`` on ``data.train``.

1 CPU / 1 GPU:  ``python -m stages.train --params params.yaml ...`` (what ``dvc repro`` runs).
N GPUs (DDP):   the same command with ``train.accelerator: gpu``, ``train.devices: N``,
                ``train.strategy: ddp``; Lightning relaunches this module once per rank and only
                global rank 0 writes. ``train.batch_size`` is the global batch (per device =
                batch / world, world = ``train.devices x train.num_nodes``); each device keeps a
                reference queue of ``queue_length // world`` rows per bank (official).

Several nodes: set the hardware in ``params.yaml`` (it is part of the declared ``train`` params,
so ``dvc.lock`` records what ran), e.g. 2 nodes x 4 GPUs::

    train.accelerator: gpu    train.devices: 4    train.num_nodes: 2    train.strategy: ddp

and start one process per GPU with the stage's own command line (the ``cmd`` of ``train`` in
``dvc.yaml``; ``coco`` stands for ``data.train``). SLURM (Lightning detects the environment;
``--ntasks-per-node`` must equal ``train.devices``)::

    srun --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 \
        python -m stages.train --params params.yaml --dataset coco \
        --data data/prepared/coco --manifest data/crops/manifest.parquet \
        --init models/init/init_backbone.safetensors --out models/neco \
        --checkpoints models/checkpoints --live reports/train \
        --timings reports/timings/train.json

torchrun, on every node (``--node-rank`` 0 on the first, 1 on the second; ``--master-addr``
is the first node's host name)::

    torchrun --nnodes=2 --nproc-per-node=4 --node-rank=0 --master-addr=node0 \
        --master-port=29500 -m stages.train --params params.yaml --dataset coco \
        --data data/prepared/coco --manifest data/crops/manifest.parquet \
        --init models/init/init_backbone.safetensors --out models/neco \
        --checkpoints models/checkpoints --live reports/train \
        --timings reports/timings/train.json

Outside ``dvc repro``, bring the upstream stages up to date first (``dvc repro weights crops``),
run the command above, and when it exits 0 record the result with ``dvc commit train`` (it
hashes the deps, params and outputs into ``dvc.lock``); ``dvc repro`` then continues with the
evaluation stages. ``models/checkpoints`` must be on a file system every node sees.

Interruptions: on SIGTERM (``timeout``, SLURM preemption or time limit, ``docker stop``) or
SIGINT the stage stops after the current step, prints one line (``[train] training interrupted
by SIGTERM: ...``) and exits ``128 + signal`` (143 for SIGTERM, 130 for SIGINT) without any
output that looks complete; rerunning the same command (resubmitting the job, ``sbatch
--requeue``) resumes exactly from ``--checkpoints``/``last.ckpt``, the last checkpointed epoch
end. After SIGKILL (no handler runs) the rerun resumes the same way.

Outputs: ``--out`` (init and trained student backbones as timm-loadable safetensors, the
resolved configuration), ``--checkpoints`` (resumable full checkpoint), ``--live`` (dvclive
curves and ``summary.json``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from neco.config import DataConfig, RuntimeConfig, load_section, load_value
from neco.models.recipes import load_training

PARAMS = ["seed", "data.train", "crops", "train"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--dataset", required=True, help="training dataset (data.train)")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True,
                        help="initial backbone written by the weights stage")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True)
    parser.add_argument("--timings", type=Path, default=None,
                        help="run facts that are not results (wall time, images/s, resumed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    seed = load_value(args.params, "seed", int)
    data = load_section(args.params, "data", DataConfig)
    train, crops, resolution = load_training(args.params)  # null recipe keys filled
    print(f"[train] {resolution.summary_line()}", flush=True)
    runtime = load_section(args.params, "runtime", RuntimeConfig)
    if data.train != args.dataset:
        raise SystemExit(f"--dataset {args.dataset!r} disagrees with data.train={data.train!r}")

    from neco.data.registry import get_dataset, open_images
    from neco.train.run import TrainingInterrupted, run_training

    spec = get_dataset(args.dataset)
    if spec.unlabelled_split is None:
        raise SystemExit(f"data.train: dataset {args.dataset!r} has no training split")
    images = open_images(args.dataset, args.data, spec.unlabelled_split)
    try:
        summary = run_training(
            seed=seed,
            train=train,
            crops=crops,
            images=images,
            manifest_path=args.manifest,
            out_dir=args.out,
            checkpoint_dir=args.checkpoints,
            live_dir=args.live,
            runtime=runtime,
            init_weights=args.init,
            timings_path=args.timings,
            resolution=resolution,
        )
    except TrainingInterrupted as stop:
        if stop.report:
            print(f"[train] {stop}", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    if summary and summary["final_loss"] is not None:
        print(f"[train] {summary['steps']} steps, loss {summary['initial_loss']:.4f} -> "
              f"{summary['final_loss']:.4f}, {summary['wall_s']:.0f} s")
    elif summary:
        print("[train] no optimisation step was run (train.max_steps = 0): student = init")


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
