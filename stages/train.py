"""Stage `train`: NeCo post-pretraining of ``train.backbone`` on ``data.train``.

1 CPU / 1 GPU:  ``python -m stages.train --params params.yaml ...`` (what ``dvc repro`` runs).
N GPUs (DDP):   the same command with ``train.accelerator: gpu``, ``train.devices: N``,
                ``train.strategy: ddp``; Lightning relaunches this module once per rank and only
                rank 0 writes. ``train.batch_size`` is the global batch (per device = batch / N).

Outputs: ``--out`` (init and trained student backbones as timm-loadable safetensors, the
resolved configuration), ``--checkpoints`` (resumable full checkpoint), ``--live`` (dvclive
curves and ``summary.json``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PARAMS = ["seed", "data.train", "crops", "train"]


def resolve_initial_weights(argv: list[str]) -> None:
    """Fetch ``train.backbone``'s official weights, or fail, before anything heavy is imported.

    Offline, ``dvc exp run -S train.backbone=dinov2_vitb14`` must fail within seconds naming the
    URL and the ``train.weights`` hint, but the typed loader (``neco.config``: torchvision and
    the eval stack) and Lightning take ~10 s to import on a busy machine, and so does the error
    handler of ``neco.cli.run_stage`` (it imports ``neco.config`` to match exception types). So
    this runs first, reads the three keys it needs straight from the YAML (deviates from P3; the
    typed load in :func:`main` validates them again) and resolves the file with
    ``neco.models.fetch`` (imports only torch). Online, the download happens here, once, before
    Lightning starts any DDP rank. Nothing to do for a local file, ``random`` or a random-init
    backbone; anything malformed is left to :func:`main`, which names the key.

    Raises:
        SystemExit: ``error: <WeightsError message>`` (status 1), as ``run_stage`` prints it.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", type=Path)
    params = parser.parse_known_args(argv)[0].params
    if params is None or not params.is_file():
        return
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(OmegaConf.load(params))
    except Exception:  # malformed YAML: main() reports it through the typed loader
        return
    train = raw.get("train") if isinstance(raw, dict) else None
    runtime = raw.get("runtime") if isinstance(raw, dict) else None
    if not isinstance(train, dict) or train.get("weights") is not None:
        return
    name, cache = train.get("backbone"), train.get("weights_cache")
    if not isinstance(name, str) or not (cache is None or isinstance(cache, str)):
        return
    from neco.models.fetch import resolve_weights_file, weights_cache_dir
    from neco.models.registry import BACKBONES, SourceKind, WeightsError

    if name not in BACKBONES or BACKBONES[name].weights.kind is SourceKind.RANDOM:
        return
    progress = bool(runtime.get("progress")) if isinstance(runtime, dict) else False
    try:
        resolve_weights_file(
            name, BACKBONES[name].weights, cache_dir=weights_cache_dir(cache), progress=progress
        )
    except WeightsError as err:
        if os.environ.get("NECO_TRACEBACK"):
            raise
        raise SystemExit(f"error: {err}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--dataset", required=True, help="training dataset (data.train)")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None,
                        help="initial backbone from the weights stage; default: resolve train.weights")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from neco.config import DataConfig, RuntimeConfig, TrainConfig, load_section, load_value
    from neco.config.method import CropConfig

    seed = load_value(args.params, "seed", int)
    data = load_section(args.params, "data", DataConfig)
    train = load_section(args.params, "train", TrainConfig)
    crops = load_section(args.params, "crops", CropConfig)
    runtime = load_section(args.params, "runtime", RuntimeConfig)
    if data.train != args.dataset:
        raise SystemExit(f"--dataset {args.dataset!r} disagrees with data.train={data.train!r}")

    from neco.data.registry import get_dataset, open_images
    from neco.train.run import run_training

    spec = get_dataset(args.dataset)
    if spec.unlabelled_split is None:
        raise SystemExit(f"data.train: dataset {args.dataset!r} has no training split")
    images = open_images(args.dataset, args.data, spec.unlabelled_split)
    summary = run_training(
        seed=seed,
        train=train,
        crops=crops,
        images=images,
        manifest_path=args.manifest,
        out_dir=args.out,
        checkpoint_dir=args.checkpoints,
        live_dir=args.live,
        num_workers=runtime.num_workers,
        progress=runtime.progress,
        init_weights=args.init,
    )
    if summary and summary["final_loss"] is not None:
        print(f"[train] {summary['steps']} steps, loss {summary['initial_loss']:.4f} -> "
              f"{summary['final_loss']:.4f}, {summary['wall_s']:.0f} s")
    elif summary:
        print("[train] no optimisation step was run (train.max_steps = 0): student = init")


if __name__ == "__main__":
    if "--init" not in sys.argv:
        resolve_initial_weights(sys.argv[1:])  # first: an offline failure takes seconds, not ~10 s
    from neco.cli import run_stage

    run_stage(main)
