"""Fault tolerance of the train stage: atomic checkpoints, integrity checks, the resume key.

* :class:`AtomicCheckpointIO` writes every Lightning checkpoint to a temporary file in the
  checkpoint's own directory, ``fsync``s it and renames it into place (``neco.io.atomic_path``),
  then ``fsync``s the directory. Lightning's ``TorchCheckpointIO`` stages the file in the system
  temp directory and *copies* it over the destination when that is another file system, so a
  full disk or a kill during the copy leaves a truncated ``last.ckpt``.
* :func:`checkpoint_problem` verifies a checkpoint before it is trusted: a complete zip archive
  (``torch.save``'s format), every member's CRC-32, and a ``torch.load`` (memory-mapped) of the
  Lightning keys. An unreadable ``last.ckpt`` is moved aside (``last.ckpt.corrupt``) with one
  warning and the run starts from scratch.
* :func:`input_digests` and :func:`resume_key`: a ``last.ckpt`` is resumed only when it was
  written for the same resolved configuration **and** the same content of what the model is
  trained from (init weights, crop manifest, training images). The key is stored inside the
  checkpoint (``neco_resume_key``), so every DDP rank decides from the file itself.
* :func:`decide_resume` (read-only, every rank) and :func:`apply_decision` (global rank 0, after
  the processes are launched) split deciding from acting, so that no rank can see a checkpoint
  that another rank has already moved or removed and decide differently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from neco.io import atomic_path, sha256_file, write_text

log = logging.getLogger(__name__)

LAST = "last.ckpt"
FINAL = "final.ckpt"
MARK = "last.fingerprint"
CORRUPT_SUFFIX = ".corrupt"
RESUME_KEY = "neco_resume_key"
#: what a Lightning fit checkpoint holds (the resume key is checked separately: an older
#: version of this stage wrote readable checkpoints without one)
REQUIRED_KEYS = ("state_dict", "optimizer_states", "loops", "global_step", "epoch")


# ---- atomic writes -------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically, on ``path``'s own file system.

    The bytes go to a temporary file next to ``path`` that is flushed and ``fsync``ed before it
    is renamed onto ``path``; on any failure (``ENOSPC``, a signal's exception) the temporary
    file is removed and ``path`` keeps its previous content.
    """
    dest = Path(path)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
    _fsync_dir(dest.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` whose saves are :func:`atomic_torch_save` (local paths)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint: storage_options is not supported")
        atomic_torch_save(checkpoint, Path(path))


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes (``.<name>.*.tmp``) in
    ``directory``; a SIGKILL during a save leaves one behind."""
    removed = []
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


# ---- integrity -----------------------------------------------------------------------------
def checkpoint_problem(path: Path) -> tuple[str | None, dict[str, Any]]:
    """Why ``path`` cannot be resumed from (None if it can), and its small metadata.

    Checks, cheapest first: a complete zip archive (truncation loses the central directory at
    the end), the CRC-32 of every member (``ZipFile.testzip`` reads the file once), then a
    memory-mapped ``torch.load`` on the CPU and the Lightning keys (:data:`REQUIRED_KEYS`).

    Returns:
        ``(reason or None, {"global_step", "epoch", "neco_resume_key"})``.
    """
    try:
        if not zipfile.is_zipfile(path):
            return "it is not a complete zip archive (truncated, e.g. by a full disk)", {}
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            return f"its member {bad!r} fails the CRC-32 check (corrupted bytes)", {}
        # our own file (written by this stage), so unpickling it is trusted
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # zipfile.BadZipFile, OSError, RuntimeError, UnpicklingError ...
        return f"it cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:300]})", {}
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a Lightning checkpoint", {}
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        return f"it is not a Lightning training checkpoint (missing {missing})", {}
    meta = {"global_step": ckpt["global_step"], "epoch": ckpt["epoch"],
            RESUME_KEY: ckpt.get(RESUME_KEY)}
    del ckpt
    return None, meta


# ---- what the run is trained from --------------------------------------------------------
def image_files_digest(ids: Sequence[str], paths: Sequence[Path], *, threads: int | None = None
                       ) -> str:
    """sha256 over ``id<TAB>sha256(file bytes)`` lines of the training images, in split order.

    Why the bytes and not something cheaper: a prepared dataset's ``meta.json`` records the
    split files' md5s and the raw archives' checksums (``neco.data.meta``), not one digest per
    image, so an image edited or re-converted in ``data/prepared`` leaves it unchanged; sizes and
    mtimes are not content either. Reading every file costs one pass over the training set
    (COCO train2017: 118k files, ~18 GB, read by ``threads`` threads; hashlib releases the GIL),
    which is seconds to a minute on local disks against hours of training, and the page cache
    serves the other DDP ranks of a node.
    """
    pool = ThreadPoolExecutor(max_workers=threads or min(32, (os.cpu_count() or 1) + 4))
    try:
        digests = list(pool.map(sha256_file, paths))
    finally:  # an exception (a signal's) must not wait for the queued files
        pool.shutdown(wait=True, cancel_futures=True)
    h = hashlib.sha256()
    for image_id, digest in zip(ids, digests, strict=True):
        h.update(f"{image_id}\t{digest}\n".encode())
    return h.hexdigest()


def input_digests(*, init_weights: Path | None, manifest: Path, images: Any) -> dict[str, Any]:
    """Content digests of everything the run is trained from, besides the params.

    Args:
        init_weights: the weights stage's initial backbone (None: built from the params, which
            the configuration fingerprint already covers).
        manifest: the crop manifest.
        images: the training images (``neco.data.reader.ImageDataset``: ``ids``, ``path(i)``).
    """
    paths = [Path(images.path(i)) for i in range(len(images))]
    return {
        "init_weights": sha256_file(init_weights) if init_weights is not None else None,
        "manifest": sha256_file(manifest),
        "images": image_files_digest(list(images.ids), paths),
        "num_images": len(paths),
    }


def resume_key(config_fingerprint: str, inputs: dict[str, Any]) -> str:
    """The key a checkpoint must carry to be resumed: configuration + input contents."""
    blob = json.dumps({"config": config_fingerprint, "inputs": inputs}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


# ---- deciding and acting -------------------------------------------------------------------
@dataclass(frozen=True)
class ResumeDecision:
    """What to do with ``last.ckpt``.

    Attributes:
        resume: the checkpoint to resume from, or None (start from scratch).
        discard: a readable ``last.ckpt`` of another configuration or other inputs (removed).
        corrupt: an unreadable ``last.ckpt`` (moved aside to ``<name>.corrupt``).
        reason: one line for the log.
        step: the optimiser step ``resume`` holds.
    """

    resume: Path | None
    discard: Path | None = None
    corrupt: Path | None = None
    reason: str = ""
    step: int | None = None

    def as_tuple(self) -> tuple[bool, bool, bool, int | None]:
        """Comparable across processes (DDP ranks must agree; paths may be mounted elsewhere)."""
        return (self.resume is not None, self.discard is not None, self.corrupt is not None,
                self.step)


def decide_resume(checkpoint_dir: Path, key: str) -> ResumeDecision:
    """Whether to resume from ``checkpoint_dir/last.ckpt`` (reads only; every rank calls it)."""
    ckpt = checkpoint_dir / LAST
    if not ckpt.is_file():
        return ResumeDecision(None, reason="no checkpoint to resume from")
    problem, meta = checkpoint_problem(ckpt)
    if problem is not None:
        return ResumeDecision(None, corrupt=ckpt, reason=problem)
    if meta[RESUME_KEY] != key:
        return ResumeDecision(
            None,
            discard=ckpt,
            reason=f"ignoring {ckpt}: it was written for a different configuration or from "
            "different inputs (init weights, crop manifest or training images)",
        )
    step = int(meta["global_step"])
    return ResumeDecision(ckpt, reason=f"resuming from {ckpt} (optimiser step {step})", step=step)


def apply_decision(decision: ResumeDecision, checkpoint_dir: Path, key: str) -> None:
    """Global rank 0, once every rank has decided: act on ``decision`` and mark the directory.

    Removes partial writes, moves an unreadable ``last.ckpt`` aside with one warning (naming the
    file and why), removes one of another configuration, and writes ``last.fingerprint`` (the
    key of the run that now owns ``last.ckpt``; informational, the decision reads the key inside
    the checkpoint).
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for tmp in remove_partial_writes(checkpoint_dir):
        log.info("removed %s, the remains of an interrupted checkpoint write", tmp)
    if decision.corrupt is not None:
        aside = decision.corrupt.with_name(decision.corrupt.name + CORRUPT_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.replace(decision.corrupt, aside)
        log.warning(
            "checkpoint %s is unusable, %s: moved it to %s; training starts from scratch",
            decision.corrupt, decision.reason, aside,
        )
    elif decision.discard is not None:
        log.info("%s; training starts from scratch", decision.reason)
        decision.discard.unlink(missing_ok=True)
    else:
        log.info(decision.reason)
    write_text(checkpoint_dir / MARK, key + "\n")


def prepare_live_resume(live_dir: Path, last_step: int) -> None:
    """Make an interrupted attempt's dvclive directory fit a resume from ``last_step``.

    * Plot rows logged after ``last_step`` (the interrupted epoch) are dropped: the resumed run
      logs those steps again, and they would appear twice in the curves. Rows are
      ``step<TAB>value`` TSVs under ``live_dir/plots/metrics`` (1-based optimiser steps,
      ``neco.train.run``'s ``StepLogger``); a row cut short by a kill is dropped with them.
    * dvclive's ``metrics.json``, which ``Live(resume=True)`` reads, is removed when a kill
      left it unreadable (it is rewritten at the next step).
    """
    plots = live_dir / "plots" / "metrics"
    for tsv in sorted(plots.rglob("*.tsv")) if plots.is_dir() else []:
        lines = tsv.read_text().splitlines(keepends=True)
        if not lines or "step" not in lines[0].rstrip("\n").split("\t"):
            continue
        header, rows = lines[0], lines[1:]
        col = header.rstrip("\n").split("\t").index("step")
        kept = [r for r in rows if r.endswith("\n") and _step(r, col) <= last_step]
        if len(kept) != len(rows):
            write_text(tsv, "".join([header, *kept]))
    metrics = live_dir / "metrics.json"
    if metrics.is_file():
        try:
            json.loads(metrics.read_text())
        except ValueError as err:  # a partial write: JSONDecodeError, UnicodeDecodeError
            log.info("removing %s, unreadable after the interruption (%s)", metrics, err)
            metrics.unlink()


def _step(row: str, col: int) -> float:
    """The step of a TSV row (``inf`` when it is not a number, so the row is dropped)."""
    try:
        return float(row.split("\t")[col])
    except (IndexError, ValueError):
        return float("inf")
