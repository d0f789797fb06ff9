"""Atomic, rank-zero-only writers.

Every output is written to a temporary file in the destination directory and renamed into
place, so an interrupted stage never leaves a half-written file that looks complete
(STYLE P9). Under DDP only global rank 0 writes. A write that fails because the file system is
full (``ENOSPC``/``EDQUOT``, or a C++ writer's bare "iostream error" on a full disk) becomes a
:class:`DiskFullError` naming the path, which the stages print as one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_only

# lightning_fabric.utilities.rank_zero._get_rank reads these, first one set wins.
_RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_rank_zero() -> bool:
    """Whether this process is the one that writes outputs (global rank 0).

    Reads Lightning's shared rank-zero state, ``lightning_utilities``' ``rank_zero_only.rank``
    (the same object as ``pytorch_lightning.utilities.rank_zero_only``): Lightning's strategies
    set it to the global rank once launched, and ``lightning_fabric`` initialises it from the
    launcher's environment when imported. Before that (Lightning not imported yet; importing
    ``lightning_fabric`` here would pull in torch) the attribute is unset and the same
    environment variables are read, in ``lightning_fabric.utilities.rank_zero._get_rank``'s
    order.
    """
    rank = getattr(rank_zero_only, "rank", None)
    if rank is None:
        rank = next((int(os.environ[k]) for k in _RANK_ENV if k in os.environ), 0)
    return int(rank) == 0


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Writers that lose the errno: pyarrow keeps the strerror text in its message; C++ streams
# (torch.save's PytorchStreamWriter: "... iostream error") say only that the write failed, which
# means "disk full" when the file system has (almost) no free space left.
_DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
_WRITE_FAILED_TEXTS = ("iostream error", "file write failed")
_LOW_SPACE_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write failed because the file system holding ``path`` is full (or the quota is used up).

    ``str()`` is one line: ``<path>: no space left on device (...); free some space ...``.
    """

    def __init__(self, path: str | os.PathLike[str], detail: str = "") -> None:
        free = free_bytes(path)
        left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        super().__init__(errno.ENOSPC, f"{path}: no space left on device ({left}{detail}); "
                                       "free some space on that file system and rerun")
        self.path = Path(path)
        self.detail = detail

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[DiskFullError], tuple[Path, str]]:
        return type(self), (self.path, self.detail)  # picklable (OSError would pass errno)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user on the file system of ``path`` (its nearest existing
    ancestor), or None when that cannot be read."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def is_disk_full(err: BaseException, path: str | os.PathLike[str]) -> bool:
    """Whether ``err``, raised while writing under ``path``, means the disk (or quota) is full."""
    if isinstance(err, DiskFullError):
        return True
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in DISK_FULL_ERRNOS
    if not isinstance(err, (OSError, RuntimeError)):
        return False
    text = str(err)
    if any(s in text for s in _DISK_FULL_TEXTS):
        return True
    if any(s in text for s in _WRITE_FAILED_TEXTS):
        free = free_bytes(path)
        return free is not None and free < _LOW_SPACE_BYTES
    return False


@contextlib.contextmanager
def report_disk_full(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a disk-full failure inside the block as :class:`DiskFullError` naming ``path``.

    Other exceptions propagate unchanged. Check before any cleanup frees the space: the
    errno-less C++ failures are recognised by the free space left.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if is_disk_full(err, path):
            errnoless = not (isinstance(err, OSError) and err.errno is not None)
            said = " ".join(str(err).split())[:200]
            raise DiskFullError(path, f"; the writer said: {said}" if errnoless else "") from err
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` if the block succeeds.

    Args:
        dest: final path. Its parent directory is created.
        suffix: suffix for the temporary file (some writers infer the format from it).

    Raises:
        DiskFullError: the block (or the rename) failed because the file system is full.
    """
    dest = Path(dest)
    with report_disk_full(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp",
                                   dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with report_disk_full(dest):
            yield tmp_path
            if tmp_path.is_file():  # mkstemp creates 0600; give the file the usual umask mode
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``dest`` (rank 0 only)."""
    if not is_rank_zero():
        return
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``dest`` with LF line endings (rank 0 only)."""
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON with a trailing newline."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes with ``hashlib`` algorithm ``algorithm`` (e.g. md5, sha1).

    ``hashlib.file_digest`` on Python 3.11+, 1 MiB chunks on 3.10.
    """
    with open(path, "rb") as fh:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(fh, algorithm).hexdigest()
        digest = hashlib.new(algorithm)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (``file_digest(path, "sha256")``)."""
    return file_digest(path, "sha256")
