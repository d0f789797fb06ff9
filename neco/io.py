"""Atomic, rank-zero-only writers.

Every output is written to a temporary file in the destination directory and renamed into
place, so an interrupted stage never leaves a half-written file that looks complete
(STYLE P9). Under DDP only global rank 0 writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` if the block succeeds.

    Args:
        dest: final path. Its parent directory is created.
        suffix: suffix for the temporary file (some writers infer the format from it).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
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
