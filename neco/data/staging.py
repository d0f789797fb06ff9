"""Whole-directory atomic outputs and scratch space for prepare stages (STYLE P9, datasets.md §8).

A prepare stage builds its tree in a hidden staging directory next to the destination and
renames it into place only when everything succeeded, so an interrupted run never leaves a
half-written prepared tree that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``dest`` as a whole.

    Args:
        dest: final directory. An existing ``dest`` is replaced only after the block succeeds.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
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
    """Yield ``items``, logging ``desc: i/total`` at every 10 % when ``enabled``."""
    step = max(1, total // 10)
    for i, item in enumerate(items, start=1):
        yield item
        if enabled and (i % step == 0 or i == total):
            log.info("%s: %d/%d", desc, i, total)
