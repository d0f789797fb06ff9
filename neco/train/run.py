"""NeCo post-pretraining run: resolve the recipe, build the module, fit, export.

``run_training`` is what ``stages/train.py`` calls. The same call runs on 1 CPU, 1 GPU or N GPUs
(DDP): hardware is params (``train.accelerator``, ``train.devices``, ``train.strategy``,
``train.precision``); Lightning relaunches ``python -m stages.train`` once per rank, and only
rank 0 writes (STYLE P9, P12).

Resuming: a full checkpoint (``last.ckpt``: student, teacher, queue, optimiser, reference RNG)
is saved at the end of every ``runtime.train.checkpoint_every_n_epochs`` epochs into the persistent
checkpoint directory, together with a fingerprint of the resolved configuration. Epoch
boundaries make the resume exact: the sampler and the photometric RNG are functions of (seed,
epoch, index), and the global torch RNG (drop-path) is reseeded from (seed, step, rank) before
every step. A rerun of an *interrupted* run with the same configuration resumes from
``last.ckpt``; when a run completes, its final state is saved as ``final.ckpt`` (kept, never
resumed from) and ``last.ckpt`` is removed, so a rerun caused by a code change trains from
scratch, and a changed configuration (``max_steps`` included) never resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from neco.config import RuntimeConfig, TrainConfig, to_plain
from neco.config.method import CropConfig
from neco.io import is_rank_zero, write_json
from neco.method.augment import PhotometricParams
from neco.models.export import export_backbone
from neco.models.recipes import resolve_train_config
from neco.train.datamodule import NeCoDataModule
from neco.train.module import NeCoModule

log = logging.getLogger(__name__)


def config_fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able configuration."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class StepTimer(Callback):
    """Measures the wall time of every optimiser step (kept out of the versioned outputs)."""

    def __init__(self, global_batch_size: int) -> None:
        self.global_batch_size = global_batch_size
        self._t0 = 0.0
        self.step_times: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        dt = time.perf_counter() - self._t0
        self.step_times.append(dt)


def run_training(
    *,
    seed: int,
    train: TrainConfig,
    crops: CropConfig,
    images: Any,
    manifest_path: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    live_dir: Path,
    runtime: RuntimeConfig,
    init_weights: Path | None = None,
    timings_path: Path | None = None,
) -> dict[str, Any]:
    """Post-pretrain ``train.backbone`` on ``images`` and write every output.

    Args:
        seed: global seed (``seed`` in params).
        train, crops: validated config sections.
        images: unlabelled training images (``neco.data.reader.ImageDataset``).
        manifest_path: the crops stage's manifest.
        out_dir: ``models/neco``: init/student backbones (safetensors), resolved config.
        checkpoint_dir: persistent full checkpoints for resuming.
        live_dir: dvclive directory (curves and ``summary.json``).
        runtime: DataLoader workers, progress bar, checkpoint and logging periods (knobs that
            cannot change the trained weights).
        init_weights: the initial backbone written by the ``weights`` stage; None = build it
            from ``train.weights`` / the official source and write it to ``out_dir``.
        timings_path: where to write this run's facts that are not results (wall time, s/step,
            images/s, whether it resumed); outside every versioned output, so that the same
            params and inputs give byte-identical outputs. None = not written.

    Returns:
        The training summary (written to ``live_dir/summary.json``) plus the run facts
        (written to ``timings_path``).
    """
    from dvclive.lightning import DVCLiveLogger

    class StepLogger(DVCLiveLogger):
        """Logs at step = optimiser steps done (1-based). dvclive 3.49 treats step 0 as "no step"
        (``if step:``) and would log the first two steps both as step 1."""

        def log_metrics(
            self, metrics: Any, step: int | None = None, sync: bool | None = False
        ) -> None:
            super().log_metrics(metrics, None if step is None else step + 1, sync)

    resolved = resolve_train_config(train, crops)
    values = resolved["values"]
    plain = {"seed": seed, "train": to_plain(train), "crops": to_plain(crops), "resolved": values}
    fingerprint = config_fingerprint(plain)
    pl.seed_everything(seed, workers=True, verbose=False)

    # processes that share the global batch (1 CPU process unless devices > 1)
    world = train.devices
    module = NeCoModule(
        train=train, resolved=values, seed=seed, devices=world, init_weights=init_weights
    )
    datamodule = NeCoDataModule(
        images,
        manifest_path,
        global_batch_size=int(values["batch_size"]),
        params=PhotometricParams(train.jitter_strength, train.blur_strength),
        seed=seed,
        num_workers=runtime.num_workers,
    )
    steps_per_epoch = datamodule.steps_per_epoch()
    epochs = int(values["epochs"])
    module.set_total_steps(steps_per_epoch * epochs)

    if is_rank_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
        if init_weights is None:
            export_backbone(module.student_backbone, out_dir / "init_backbone.safetensors")

    ckpt_cb = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="last",
        save_last=False,
        save_top_k=1,
        every_n_epochs=runtime.train.checkpoint_every_n_epochs,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    timer = StepTimer(int(values["batch_size"]))
    resume = _resumable_checkpoint(checkpoint_dir, fingerprint)
    if is_rank_zero():
        _mark_checkpoint(checkpoint_dir, fingerprint)
    logger = StepLogger(
        dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume is not None, report=None
    )
    trainer = pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        precision=train.precision.value,
        max_epochs=epochs,
        max_steps=train.max_steps if train.max_steps is not None else -1,
        gradient_clip_val=None,  # clipping is done by the module on the official parameter subset
        log_every_n_steps=runtime.train.log_every_n_steps,
        callbacks=[ckpt_cb, timer],
        logger=logger,
        enable_progress_bar=runtime.progress,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        deterministic=False,
        benchmark=torch.cuda.is_available(),
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    wall = time.perf_counter() - t0

    # The completed state, whatever checkpoint_every_n_epochs and max_steps were: renaming
    # last.ckpt would keep an older epoch (epochs not a multiple of the period) or a stale file
    # of an earlier configuration (no periodic checkpoint at all). Every rank calls it (DDP).
    trainer.save_checkpoint(checkpoint_dir / "final.ckpt", weights_only=False)
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        (checkpoint_dir / "last.ckpt").unlink(missing_ok=True)
        export_backbone(module.student_backbone, out_dir / "student_backbone.safetensors")
        resolved_out = {**resolved, "fingerprint": fingerprint, "steps_per_epoch": steps_per_epoch}
        write_json(out_dir / "resolved_config.json", resolved_out)
        losses = module.loss_history
        times = timer.step_times[1:] or timer.step_times
        summary = {
            "backbone": train.backbone,
            "epochs": epochs,
            "steps": int(trainer.global_step),
            "global_batch_size": int(values["batch_size"]),
            "initial_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "final_loss_epoch_mean": module.last_epoch_mean_loss,
            "first_epoch_mean_loss": module.first_epoch_mean_loss,
            "device": str(trainer.strategy.root_device),
            "precision": train.precision.value,
        }
        write_json(live_dir / "summary.json", summary)
        facts = {
            "s_per_step": sum(times) / len(times) if times else None,
            "images_per_s": int(values["batch_size"]) * len(times) / sum(times) if times else None,
            "wall_s": wall,
            "steps_timed": len(timer.step_times),
            "resumed": resume is not None,
        }
        if timings_path is not None:
            write_json(timings_path, facts)
        summary = {**summary, **facts}
    return summary


_MARK = "last.fingerprint"


def _resumable_checkpoint(checkpoint_dir: Path, fingerprint: str) -> Path | None:
    """``last.ckpt`` if it was written by a run with the same resolved configuration."""
    ckpt = checkpoint_dir / "last.ckpt"
    mark = checkpoint_dir / _MARK
    if ckpt.is_file() and mark.is_file() and mark.read_text().strip() == fingerprint:
        log.info("resuming from %s", ckpt)
        return ckpt
    if ckpt.is_file():
        log.info("ignoring %s: it was written with a different configuration", ckpt)
        ckpt.unlink()
    return None


def _mark_checkpoint(checkpoint_dir: Path, fingerprint: str) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / _MARK).write_text(fingerprint + "\n")
