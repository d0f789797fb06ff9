"""Verified, resumable archive downloads with mirror fallback (datasets.md §1, §8).

``fetch`` streams one file to a ``.part`` file in a *download cache outside the stage outputs*,
resumes an interrupted ``.part`` with an HTTP ``Range`` request, retries transient errors across
mirrors with exponential backoff, fails fast on errors that retrying cannot fix (unknown host,
4xx, connection refused by a remote host), rejects HTML error pages, verifies size and checksums
*before* the file is moved into place, and records the verified checksums in
``<dest>.verified`` so that a re-run is a no-op.

Partial downloads: DVC deletes a stage's outputs before it reruns a failed stage, so a ``.part``
inside ``data/raw/<source>`` would never survive to be resumed. It lives instead in

* ``datasets.<source>.cache_dir`` when that is set (next to the verified archives kept there);
* otherwise ``$XDG_CACHE_HOME/neco/downloads`` (``~/.cache/neco/downloads`` when
  ``XDG_CACHE_HOME`` is unset), see :func:`default_download_cache`;

named ``<filename>.<algo>-<hex digest>.part`` after the expected checksum (without one, after
the URLs), and guarded by a ``<part>.lock`` file lock (``filelock``): two concurrent runs fetching
the same file take turns, so they never append to the same ``.part``. The verified file is then
renamed (or copied across file systems) to ``dest``; nothing is left in the download cache.

Standard library plus ``filelock`` and ``neco.io`` (file digests, disk-full errors); the
single-request transfer and the error taxonomy live in ``neco.download.transfer``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from neco.config.sections import DownloadConfig as DownloadConfig  # re-export (runtime.download)
from neco.download.archives import ArchiveConfig
from neco.download.transfer import FatalError, TransientError, transfer
from neco.io import DiskFullError, file_digest, is_disk_full, report_disk_full

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HASHES = ("md5", "sha1", "sha256")


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification."""


# ------------------------------------------------------------------ verification helpers


def _expected(md5: str | None, sha1: str | None, sha256: str | None) -> dict[str, str]:
    out = {k: v.lower() for k, v in (("md5", md5), ("sha1", sha1), ("sha256", sha256)) if v}
    return out


def hash_file(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm in ``algorithms`` (``neco.io.file_digest``)."""
    return {a: file_digest(path, a) for a in algorithms}


def marker_path(dest: Path) -> Path:
    """The ``.verified`` marker written next to a verified file."""
    return dest.with_name(dest.name + ".verified")


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker of ``dest`` if it exists and its recorded size equals the file's size."""
    marker = marker_path(dest)
    if not (dest.is_file() and marker.is_file()):
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("size") != dest.stat().st_size:
        return None
    return info


def _write_marker(dest: Path, digests: Mapping[str, str]) -> None:
    info = {"file": dest.name, "size": dest.stat().st_size, **digests}
    tmp = marker_path(dest).with_suffix(".tmp")
    try:
        with report_disk_full(marker_path(dest)):
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, marker_path(dest))
    finally:
        tmp.unlink(missing_ok=True)


def _check(path: Path, actual_size: int, digests: Mapping[str, str], expected: Mapping[str, str],
           size: int | None, what: str) -> None:
    """Raise DownloadError naming expected vs actual when size or a digest differs."""
    if size is not None and actual_size != size:
        raise DownloadError(f"{what}: size mismatch for {path.name}: expected {size} bytes, "
                            f"got {actual_size}")
    for algo, want in expected.items():
        if digests[algo] != want:
            raise DownloadError(f"{what}: {algo} mismatch for {path.name}: expected {want}, "
                                f"got {digests[algo]}")


# ----------------------------------------------------------------------------- public API


def _place(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest`` (copy across file systems), atomically."""
    tmp = dest.with_name(dest.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with report_disk_full(dest):
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _move(part: Path, dest: Path) -> None:
    """Move a verified ``part`` onto ``dest``: rename, or copy + delete across file systems."""
    try:
        os.replace(part, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        _place(part, dest)
        part.unlink()


def default_download_cache() -> Path:
    """Folder of partial downloads when no ``cache_dir`` is set.

    ``$XDG_CACHE_HOME/neco/downloads``, or ``~/.cache/neco/downloads`` when ``XDG_CACHE_HOME`` is
    unset or empty. It is outside every stage output, so a partial download survives DVC
    deleting the outputs of a failed stage.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "neco" / "downloads"


def part_path(part_dir: Path, filename: str, expected: Mapping[str, str],
              urls: Sequence[str], size: int | None) -> Path:
    """The partial download of ``filename`` in ``part_dir``, keyed by what it must become.

    ``<filename>.<algo>-<hex>.part`` with the strongest expected digest (sha256, sha1, md5), so
    a resume only ever continues the same file; without a checksum the key hashes the URLs and
    the size instead.
    """
    for algo in ("sha256", "sha1", "md5"):
        if algo in expected:
            key = f"{algo}-{expected[algo]}"
            break
    else:
        ident = "\n".join([*urls, str(size)]).encode("utf-8")
        key = "url-" + hashlib.sha256(ident).hexdigest()[:16]
    return Path(part_dir) / f"{filename}.{key}.part"


def _cache_key(param_hint: str | None) -> str:
    hint = param_hint or ""
    return hint.split(".archives.")[0] + ".cache_dir" if ".archives." in hint else "cache_dir"


@contextmanager
def _part_lock(part: Path, cache_key: str) -> Iterator[None]:
    """Hold ``<part>.lock``; a second run fetching the same file waits here for the first."""
    lock = FileLock(f"{part}.lock")
    try:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.warning("another run is downloading %s (lock %s); waiting for it", part.name,
                        lock.lock_file)
            lock.acquire()
    except OSError as err:  # the lock file cannot be created (read-only or missing cache dir)
        raise DownloadError(f"{part.parent}: cannot lock {part.name}.lock in the download cache "
                            f"({err}); set `{cache_key}` (or XDG_CACHE_HOME) to a writable "
                            "directory") from err
    try:
        yield
    finally:
        lock.release()


def fetch(urls: Sequence[str], dest: Path, *, md5: str | None = None,
          sha1: str | None = None, sha256: str | None = None, size: int | None = None,
          local_path: Path | None = None, retries: int, timeout_s: float, backoff_s: float,
          progress: bool = True, param_hint: str | None = None,
          part_dir: Path | None = None) -> Path:
    """Fetch one file to ``dest`` and verify it.

    Args:
        urls: mirrors, tried in order within each round.
        dest: final path; the verified download is moved here.
        md5, sha1, sha256: expected hex digests (any subset; all given ones are checked).
        size: expected size in bytes, or None.
        local_path: an existing copy; hard-linked (or copied) into place after verification,
            without touching the network.
        retries: extra rounds over the mirrors for transient errors (0 = a single round).
        timeout_s: socket timeout per connect/read, seconds.
        backoff_s: sleep before retry round r is ``backoff_s * 2**(r-1)`` seconds.
        progress: show a progress bar on stderr.
        param_hint: params key of this archive (e.g. ``datasets.voc.archives.voc2012``), used
            to tell the user what to set when every URL fails.
        part_dir: folder of the partial download (``part_path``) and its lock; None =
            :func:`default_download_cache`. Never inside a stage output (see the module doc).

    Returns:
        ``dest``, verified.

    Raises:
        DownloadError: verification failed or no URL delivered the file; the message names
            each URL with its error and the alternatives.
        DiskFullError: the disk holding the partial file or ``dest`` is full (the partial file
            is kept for a resume).
    """
    dest = Path(dest)
    expected = _expected(md5, sha1, sha256)
    algos = list(expected) or ["md5"]
    cache_key = _cache_key(param_hint)
    with report_disk_full(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
    if _verified(dest, expected, size, algos):
        return dest

    if local_path is not None:
        local_path = Path(local_path).expanduser()
        if not local_path.is_file():
            raise DownloadError(f"local_path {local_path} (param {param_hint or '?'}"
                                ".local_path) does not exist or is not a file")
        digests = hash_file(local_path, algos)
        _check(local_path, local_path.stat().st_size, digests, expected, size,
               f"local_path {local_path}")
        _place(local_path, dest)
        _write_marker(dest, digests)
        return dest

    part_dir = Path(part_dir).expanduser() if part_dir is not None else default_download_cache()
    try:
        part_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if is_disk_full(err, part_dir):
            raise DiskFullError(part_dir) from err
        raise DownloadError(f"{part_dir}: cannot create the download cache for partial files "
                            f"({err.strerror or err}); set `{cache_key}` (or XDG_CACHE_HOME) to "
                            "a writable directory") from err
    part = part_path(part_dir, dest.name, expected, urls, size)
    with _part_lock(part, cache_key):
        # Another run may have finished this very file while we waited for the lock.
        if _verified(dest, expected, size, algos):
            return dest
        return _download(urls, dest, part, expected=expected, algos=algos, size=size,
                         retries=retries, timeout_s=timeout_s, backoff_s=backoff_s,
                         progress=progress, param_hint=param_hint, cache_key=cache_key)


def _verified(dest: Path, expected: Mapping[str, str], size: int | None,
              algos: Sequence[str]) -> bool:
    """Whether ``dest`` is already there and verified (marker, or re-hashed when unmarked).

    A ``dest`` that fails verification is deleted (with its marker).
    """
    info = read_marker(dest)
    if info is not None and all(info.get(a) == v for a, v in expected.items()) and (
            size is None or info["size"] == size):
        return True  # verified earlier: no-op
    if dest.exists():
        actual = dest.stat().st_size
        digests = hash_file(dest, algos) if size in (None, actual) else {}
        try:
            _check(dest, actual, digests, expected, size, f"existing {dest}")
            _write_marker(dest, digests)
            return True
        except DownloadError as err:
            log.warning("%s; fetching it again", err)
            dest.unlink()
    marker_path(dest).unlink(missing_ok=True)
    return False


def _download(urls: Sequence[str], dest: Path, part: Path, *, expected: Mapping[str, str],
              algos: Sequence[str], size: int | None, retries: int, timeout_s: float,
              backoff_s: float, progress: bool, param_hint: str | None, cache_key: str) -> Path:
    """The network part of :func:`fetch`, under the lock of ``part``."""
    if part.exists() and size is not None and part.stat().st_size >= size:
        digests = hash_file(part, algos)  # complete (or overlong) partial: no request needed
        try:
            _check(part, part.stat().st_size, digests, expected, size, f"partial {part}")
            _move(part, dest)
            _write_marker(dest, digests)
            return dest
        except DownloadError as err:
            log.warning("%s; discarding it", err)
            part.unlink()
    errors: list[str] = []
    alive = list(urls)
    for round_ in range(retries + 1):
        if round_ and alive:
            time.sleep(backoff_s * 2 ** (round_ - 1))
        for url in list(alive):
            hashers = {a: hashlib.new(a) for a in algos}
            if part.exists():  # resume: the hash must cover the bytes already there
                with open(part, "rb") as f:
                    while block := f.read(CHUNK):
                        for h in hashers.values():
                            h.update(block)
            try:
                transfer(url, part, hashers, size=size, timeout_s=timeout_s, progress=progress,
                         name=dest.name)
            except FatalError as err:
                errors.append(f"{url}: {err} (not retried)")
                alive.remove(url)
                continue
            except TransientError as err:
                errors.append(f"{url}: {err}")
                log.warning("download of %s failed (%s); will retry", url, err)
                continue
            except OSError as err:  # writing the partial file (reads are TransientError)
                kept = part.stat().st_size if part.exists() else 0
                if is_disk_full(err, part):
                    raise DiskFullError(part, f"; downloading {url}: {kept} bytes kept, the "
                                              "next run resumes from them") from err
                raise DownloadError(f"{part}: cannot write the partial download of {url}: "
                                    f"{err}") from err
            digests = {a: h.hexdigest() for a, h in hashers.items()}
            try:
                _check(dest, part.stat().st_size, digests, expected, size, f"download from {url}")
            except DownloadError as err:
                part.unlink()
                errors.append(f"{url}: {err} (partial file removed)")
                alive.remove(url)
                continue
            _move(part, dest)
            _write_marker(dest, digests)
            return dest
        if not alive:
            break
    hint = param_hint or "<archive params>"
    note = (f"\nThe partial download ({part.stat().st_size} bytes) is kept in {part}; the next "
            "run resumes from it." if part.exists() and part.stat().st_size else "")
    raise DownloadError(
        f"could not fetch {dest.name}. Tried:\n  " + "\n  ".join(errors or ["(no urls)"])
        + f"\nAlternatives: add a working mirror to `{hint}.urls`; or download the file "
        f"yourself and set `{hint}.local_path`; or put a verified copy named {dest.name} in "
        f"the directory set as `{cache_key}`." + note)


def fetch_archives(archives: Mapping[str, ArchiveConfig], raw_dir: Path, *,
                   cache_dir: Path | None, progress: bool, retries: int, timeout_s: float,
                   backoff_s: float, param_prefix: str | None = None) -> dict[str, Path]:
    """Fetch and verify every archive of a dataset into ``raw_dir/<filename>``.

    With ``cache_dir`` the verified file lives in ``cache_dir/<filename>`` (shared across
    checkouts) and is hard-linked (or copied) into ``raw_dir``; partial downloads live there
    too. Without it they live in :func:`default_download_cache`, never in ``raw_dir``.

    Args:
        archives: archive key -> config, as in ``datasets.<name>.archives``.
        raw_dir: output directory (the download stage's out).
        cache_dir: optional shared directory of verified archives.
        progress: show progress bars.
        retries, timeout_s, backoff_s: see ``fetch``.
        param_prefix: params key of ``archives`` (e.g. ``datasets.voc.archives``) for messages.

    Returns:
        archive key -> verified path in ``raw_dir``.
    """
    raw_dir = Path(raw_dir)
    out: dict[str, Path] = {}
    for key, arc in archives.items():
        hint = f"{param_prefix or 'archives'}.{key}"
        if not arc.filename or "/" in arc.filename or arc.filename in (".", ".."):
            raise DownloadError(f"{hint}.filename must be a plain file name, got "
                                f"{arc.filename!r}")
        target = raw_dir / arc.filename
        where = Path(cache_dir) / arc.filename if cache_dir is not None else target
        kwargs: dict[str, Any] = dict(md5=arc.md5, sha1=arc.sha1, size=arc.size,
                                      local_path=Path(arc.local_path) if arc.local_path else None,
                                      retries=retries, timeout_s=timeout_s, backoff_s=backoff_s,
                                      progress=progress, param_hint=hint)
        fetch(list(arc.urls), where, part_dir=Path(cache_dir) if cache_dir is not None else None,
              **kwargs)
        if where != target:
            cached = read_marker(where)
            if cached is None or read_marker(target) != {**cached, "file": target.name}:
                target.parent.mkdir(parents=True, exist_ok=True)
                marker_path(target).unlink(missing_ok=True)
                _place(where, target)
                _write_marker(target, {a: cached[a] for a in HASHES if cached and a in cached})
        out[key] = target
    return out
