"""Whole-directory atomic outputs and scratch space for prepare stages (STYLE P9, datasets.md §8).

A prepare stage builds its tree in a hidden staging directory next to the destination and
renames it into place only when everything succeeded, so an interrupted run never leaves a
half-written prepared tree that looks complete. A full disk while building it becomes one
``neco.io.DiskFullError`` naming the destination.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from neco.io import report_disk_full

T = TypeVar("T")


@contextlib.contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``dest`` as a whole.

    Args:
        dest: final directory. An existing ``dest`` is replaced only after the block succeeds.

    Raises:
        DiskFullError: a write in the block failed because the file system is full; the staging
            directory is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    with report_disk_full(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        with report_disk_full(dest):
            yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, old / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def log_progress(items: Iterable[T], *, total: int, desc: str, enabled: bool) -> Iterator[T]:
    """Yield ``items`` behind a ``tqdm`` progress bar on stderr (none unless ``enabled``)."""
    yield from tqdm(items, total=total, desc=desc, disable=not enabled)
