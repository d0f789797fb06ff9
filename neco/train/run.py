"""NeCo post-pretraining run: resolve the recipe, build the module, fit, export.

``run_training`` is what ``stages/train.py`` calls. The same call runs on 1 CPU, 1 GPU, N GPUs
or N nodes (DDP): hardware is params (``train.accelerator``, ``train.devices``,
``train.num_nodes``, ``train.strategy``, ``train.precision``); world size = devices x num_nodes.
On one node Lightning relaunches ``python -m stages.train`` once per device; on several, ``srun``
or ``torchrun`` start every process (``stages/train.py``) and Lightning detects the cluster
environment. Only global rank 0 writes (STYLE P9, P12), and it is known only once the processes
are launched, so every write that precedes training happens in :class:`_RunGuard`'s ``setup``.

Resuming: a full checkpoint (``last.ckpt``: student, teacher, optimiser, every rank's queue and
reference RNG) is saved at the end of every ``runtime.train.checkpoint_every_n_epochs`` epochs
into the persistent checkpoint directory, atomically (``neco.train.resume``). It carries a resume
key: the fingerprint of the resolved configuration plus the content digests of the init
weights, the crop manifest and the training images. Epoch boundaries make the resume exact: the
sampler and the photometric RNG are functions of (seed, epoch, index), and the global torch RNG
(drop-path) is reseeded from (seed, step, rank) before every step. A rerun of an *interrupted*
run with the same key resumes from ``last.ckpt`` (verified first; an unreadable one is moved
aside); when a run completes, its final state is saved as ``final.ckpt`` (kept, never resumed
from) and ``last.ckpt`` is removed, so a rerun caused by a code change trains from scratch, and a
changed configuration (``max_steps`` included) or changed inputs never resume.

Interruptions: SIGTERM (``timeout``, SLURM preemption, ``docker stop``) and SIGINT (Ctrl+C; a
second one aborts at once) stop training after the current step through Lightning's own SIGTERM
handling (``Trainer.received_sigterm`` -> ``SIGTERMException``). Nothing that looks complete is
written: the stale outputs of an earlier attempt are removed at the start, and the exports are
written only after training completed. :class:`TrainingInterrupted` reaches the stage, which
prints one line and exits ``128 + signal`` (143 for SIGTERM, 130 for SIGINT); ``last.ckpt`` holds
the last checkpointed epoch end and a rerun resumes from it. SIGKILL runs no handler; the atomic
checkpoint writes still leave either the previous or the new ``last.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from neco.config import ConfigError, RuntimeConfig, TrainConfig, to_plain
from neco.config.method import CropConfig
from neco.io import is_rank_zero, write_json
from neco.method.augment import PhotometricParams
from neco.models.export import export_backbone
from neco.models.recipes import Resolution, resolve_train_config
from neco.train.datamodule import NeCoDataModule
from neco.train.module import NeCoModule
from neco.train.resume import (
    FINAL,
    LAST,
    RESUME_KEY,
    AtomicCheckpointIO,
    ResumeDecision,
    apply_decision,
    checkpoint_problem,
    decide_resume,
    input_digests,
    prepare_live_resume,
    resume_key,
)

log = logging.getLogger(__name__)


def config_fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able configuration."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


#: outputs that only a completed run writes (removed when a run starts)
COMPLETE_OUTPUTS = (
    "student_backbone.safetensors", "teacher_backbone.safetensors", "resolved_config.json"
)
SUMMARY = "summary.json"


class TrainingInterrupted(Exception):
    """Training was stopped by a signal before it completed; no complete output was written.

    Attributes:
        signum: the signal (SIGTERM or SIGINT).
        exit_code: ``128 + signum``, what a shell reports for a process ended by that signal.
        report: whether this process prints the message (global rank 0).
    """

    def __init__(self, signum: int, message: str, *, report: bool) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.report = report


def _interrupted(
    signum: int, checkpoint_dir: Path, report: bool, key: str | None
) -> TrainingInterrupted:
    """The exception for ``signum``; ``key`` None = before training started."""
    name = signal.Signals(signum).name
    if key is None:
        return TrainingInterrupted(
            signum,
            f"training interrupted by {name} before it started: nothing was trained or "
            "written; rerun the same command",
            report=report,
        )
    ckpt = checkpoint_dir / LAST
    problem, meta = checkpoint_problem(ckpt) if report and ckpt.is_file() else ("absent", {})
    if problem is None and meta[RESUME_KEY] == key:
        where = (
            f"{ckpt} holds the state after optimiser step {meta['global_step']} (an epoch end); "
            "rerun the same command (or `dvc repro train`) to resume from it"
        )
    else:
        where = (
            "no resumable checkpoint yet (stopped before the first checkpointed epoch end); "
            "a rerun starts from scratch"
        )
    return TrainingInterrupted(signum, f"training interrupted by {name}: {where}", report=report)


class _EarlySignals:
    """Until Lightning's own SIGTERM handling takes over (``on_fit_start``): SIGTERM and SIGINT
    raise :class:`TrainingInterrupted` at once (nothing is trained or written yet; hashing the
    training set can take a while). Main thread only; :meth:`restore` is idempotent."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.restore()
        raise _interrupted(signum, self.checkpoint_dir, is_rank_zero(), None)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


class _RunGuard(Callback):
    """Resume bookkeeping and graceful interruption, inside the launched processes.

    * ``setup`` (every rank, after the process group exists, before the checkpoint is
      restored): checks that every rank took the same resume decision, then global rank 0 acts
      on it (:func:`neco.train.resume.apply_decision`), trims the dvclive curves of a resumed
      run to the checkpoint's step and exports the initial backbone when there is no ``--init``.
    * ``on_save_checkpoint``: stores the resume key in every checkpoint.
    * ``on_fit_start``: hands SIGTERM/SIGINT from :class:`_EarlySignals` to Lightning (which
      registers its SIGTERM handler right after, composing it with any handler still set).
    * ``on_train_start`` .. end: SIGINT is turned into Lightning's graceful SIGTERM stop (the
      first Ctrl+C finishes the step and leaves ``last.ckpt``; a second one aborts at once).
    """

    def __init__(
        self,
        *,
        checkpoint_dir: Path,
        key: str,
        decision: ResumeDecision,
        live_dir: Path,
        init_export: Path | None,
        early: _EarlySignals,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.key = key
        self.decision = decision
        self.live_dir = live_dir
        self.init_export = init_export
        self.early = early
        self.signum: int | None = None
        self._previous_sigint: Any = None
        self._sigint_installed = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        mine = (self.key, self.decision.as_tuple())
        theirs = trainer.strategy.broadcast(mine, src=0)
        if theirs != mine:
            raise RuntimeError(
                f"rank {trainer.global_rank} disagrees with rank 0 about resuming: {mine} vs "
                f"{theirs}; do all ranks see the same files (shared file system)?"
            )
        if trainer.is_global_zero:
            apply_decision(self.decision, self.checkpoint_dir, self.key)
            if self.decision.step is not None:
                prepare_live_resume(self.live_dir, self.decision.step)
            if self.init_export is not None:
                assert isinstance(pl_module, NeCoModule)
                self.init_export.parent.mkdir(parents=True, exist_ok=True)
                export_backbone(pl_module.student_backbone, self.init_export)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RESUME_KEY] = self.key

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.early.restore()

    # Lightning registers its SIGTERM handler just before the fit loop runs (after on_fit_start)
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
            self._sigint_installed = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore_signals()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second Ctrl+C: abort now (checkpoints are atomic)
            self.restore_signals()
            raise KeyboardInterrupt
        self.signum = signal.SIGINT
        log.warning("SIGINT: stopping after this step (press Ctrl+C again to abort at once)")
        signal.raise_signal(signal.SIGTERM)  # Lightning's graceful stop, also on the other ranks

    def restore_signals(self) -> None:
        if self._sigint_installed:
            previous = self._previous_sigint
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
            self._sigint_installed = False


def cluster_plugins() -> list[Any]:
    """Lightning plugins for the cluster this process runs on.

    Under SLURM (detected by Lightning: ``srun`` tasks, ``SLURM_NTASKS`` ...) the environment is
    Lightning's ``SLURMEnvironment`` with ``auto_requeue=False``: Lightning's auto-requeue
    saves an ``hpc_ckpt_*.ckpt`` in the middle of an epoch on SIGUSR1 and prefers it to any
    ``ckpt_path`` on the next start, and a mid-epoch state does not resume exactly. Preempted or
    timed-out jobs stop on SIGTERM like everywhere else; requeue them with ``sbatch --requeue``
    (or resubmit) and they resume from ``last.ckpt``.
    """
    from lightning_fabric.plugins.environments.slurm import SLURMEnvironment

    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def _check_hardware(train: TrainConfig) -> int:
    """World size ``devices x num_nodes`` (both >= 1)."""
    for key, value in (("devices", train.devices), ("num_nodes", train.num_nodes)):
        if value < 1:
            raise ConfigError(f"train.{key} = {value}: expected an integer >= 1")
    return train.devices * train.num_nodes


def _remove_stale_outputs(out_dir: Path, live_dir: Path, timings_path: Path | None) -> None:
    """Remove what only a completed run writes, left by an earlier (unfinished) attempt, so an
    interrupted run never leaves outputs that look complete."""
    stale = [out_dir / name for name in COMPLETE_OUTPUTS] + [live_dir / SUMMARY]
    for path in stale + ([timings_path] if timings_path is not None else []):
        if path.is_file():
            log.info("removing %s of an earlier run", path)
            path.unlink(missing_ok=True)


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
    resolution: Resolution | None = None,
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
        resolution: where each recipe value came from and its paper deviations
            (:func:`neco.models.recipes.load_training`), written to ``resolved_config.json``;
            None = the values only (origins unknown).

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

    early = _EarlySignals(checkpoint_dir)
    early.install()
    try:
        return _run(
            early, seed=seed, train=train, crops=crops, images=images,
            manifest_path=manifest_path, out_dir=out_dir, checkpoint_dir=checkpoint_dir,
            live_dir=live_dir, runtime=runtime, init_weights=init_weights,
            timings_path=timings_path, logger_cls=StepLogger, resolution=resolution,
        )
    finally:
        early.restore()


def _run(
    early: _EarlySignals,
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
    init_weights: Path | None,
    timings_path: Path | None,
    logger_cls: Any,
    resolution: Resolution | None = None,
) -> dict[str, Any]:
    """:func:`run_training`'s body (``early`` holds the signals until Lightning takes over)."""
    # processes that share the global batch (1 CPU process unless devices x num_nodes > 1)
    world = _check_hardware(train)
    resolved = (resolution.to_json() if resolution is not None
                else resolve_train_config(train, crops))
    values = resolved["values"]
    plain = {"seed": seed, "train": to_plain(train), "crops": to_plain(crops), "resolved": values}
    fingerprint = config_fingerprint(plain)
    # Before launch, rank 0 is a guess (LOCAL_RANK on a second node reads as 0); removing is
    # idempotent, so a wrong guess is harmless, and it must precede everything that can fail.
    if is_rank_zero():
        _remove_stale_outputs(out_dir, live_dir, timings_path)
    key = resume_key(
        fingerprint,
        input_digests(init_weights=init_weights, manifest=manifest_path, images=images),
    )
    pl.seed_everything(seed, workers=True, verbose=False)

    module = NeCoModule(
        train=train, resolved=values, seed=seed, world_size=world, init_weights=init_weights
    )
    datamodule = NeCoDataModule(
        images,
        manifest_path,
        global_batch_size=int(values["batch_size"]),
        params=PhotometricParams(train.jitter_strength, train.blur_strength),
        seed=seed,
        num_workers=runtime.workers(world),
        world_size=world,
    )
    steps_per_epoch = datamodule.steps_per_epoch()
    epochs = int(values["epochs"])
    module.set_total_steps(steps_per_epoch * epochs)

    # read-only on every rank; global rank 0 acts on it in _RunGuard.setup
    decision = decide_resume(checkpoint_dir, key)
    resume = decision.resume
    guard = _RunGuard(
        checkpoint_dir=checkpoint_dir,
        key=key,
        decision=decision,
        live_dir=live_dir,
        init_export=out_dir / "init_backbone.safetensors" if init_weights is None else None,
        early=early,
    )

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
    logger = logger_cls(
        dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume is not None, report=None
    )
    trainer = pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        default_root_dir=str(checkpoint_dir),
        precision=train.precision.value,
        max_epochs=epochs,
        max_steps=train.max_steps if train.max_steps is not None else -1,
        gradient_clip_val=None,  # clipping is done by the module on the official parameter subset
        log_every_n_steps=runtime.train.log_every_n_steps,
        callbacks=[guard, ckpt_cb, timer],
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
    # The module's on_after_batch_transfer (train.augment_device: accelerator) is meant to run
    # with our datamodule; Lightning's notice that it does is noise on every run.
    warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except SystemExit as exc:
        # SIGTERMException (SIGTERM, or SIGINT via _RunGuard) or Lightning's sys.exit(1) after
        # a KeyboardInterrupt; both leave the trainer INTERRUPTED and last.ckpt untouched
        if not trainer.interrupted:
            raise
        signum = guard.signum or (
            signal.SIGTERM if isinstance(exc, SIGTERMException) else signal.SIGINT
        )
        raise _interrupted(signum, checkpoint_dir, trainer.is_global_zero, key) from None
    finally:
        guard.restore_signals()
    wall = time.perf_counter() - t0

    # The completed state, whatever checkpoint_every_n_epochs and max_steps were: renaming
    # last.ckpt would keep an older epoch (epochs not a multiple of the period) or a stale file
    # of an earlier configuration (no periodic checkpoint at all). Every rank calls it (DDP).
    trainer.save_checkpoint(checkpoint_dir / FINAL, weights_only=False)
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        export_backbone(module.student_backbone, out_dir / "student_backbone.safetensors")
        # The EMA teacher too (the release ships both): in a queued or temporary experiment
        # workspace the checkpoint directory is thrown away, the DVC output is not.
        export_backbone(module.teacher_backbone, out_dir / "teacher_backbone.safetensors")
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
        write_json(live_dir / SUMMARY, summary)
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
        # last: a kill before this line leaves last.ckpt to resume from, not a retrain
        (checkpoint_dir / LAST).unlink(missing_ok=True)
    return summary
