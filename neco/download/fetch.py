"""Verified, resumable archive downloads with mirror fallback (datasets.md §1, §8).

``fetch`` streams one file to ``<dest>.part``, resumes an interrupted ``.part`` with an HTTP
``Range`` request, retries transient errors across mirrors with exponential backoff, fails fast
on errors that retrying cannot fix (unknown host, 4xx, connection refused by a remote host),
rejects HTML error pages, verifies size and checksums *before* the atomic rename, and records
the verified checksums in ``<dest>.verified`` so that a re-run is a no-op. Standard library plus
``neco.io`` (file digests); the single-request transfer and the error taxonomy live in
``neco.download.transfer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neco.config.sections import DownloadConfig as DownloadConfig  # re-export (runtime.download)
from neco.download.archives import ArchiveConfig
from neco.download.transfer import FatalError, TransientError, transfer
from neco.io import file_digest

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
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, marker_path(dest))


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
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def fetch(urls: Sequence[str], dest: Path, *, md5: str | None = None,
          sha1: str | None = None, sha256: str | None = None, size: int | None = None,
          local_path: Path | None = None, retries: int, timeout_s: float, backoff_s: float,
          progress: bool = True, param_hint: str | None = None) -> Path:
    """Fetch one file to ``dest`` and verify it.

    Args:
        urls: mirrors, tried in order within each round.
        dest: final path; the download streams to ``<dest>.part``.
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

    Returns:
        ``dest``, verified.

    Raises:
        DownloadError: verification failed or no URL delivered the file; the message names
            each URL with its error and the alternatives.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = _expected(md5, sha1, sha256)
    algos = list(expected) or ["md5"]
    info = read_marker(dest)
    if info is not None and all(info.get(a) == v for a, v in expected.items()) and (
            size is None or info["size"] == size):
        return dest  # verified earlier: no-op
    if dest.exists():
        actual = dest.stat().st_size
        digests = hash_file(dest, algos) if size in (None, actual) else {}
        try:
            _check(dest, actual, digests, expected, size, f"existing {dest}")
            _write_marker(dest, digests)
            return dest
        except DownloadError as err:
            log.warning("%s; fetching it again", err)
            dest.unlink()
    marker_path(dest).unlink(missing_ok=True)

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

    part = dest.with_name(dest.name + ".part")
    if part.exists() and size is not None and part.stat().st_size >= size:
        digests = hash_file(part, algos)  # complete (or overlong) partial: no request needed
        try:
            _check(part, part.stat().st_size, digests, expected, size, f"partial {part}")
            os.replace(part, dest)
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
                transfer(url, part, hashers, size=size, timeout_s=timeout_s, progress=progress)
            except FatalError as err:
                errors.append(f"{url}: {err} (not retried)")
                alive.remove(url)
                continue
            except TransientError as err:
                errors.append(f"{url}: {err}")
                log.warning("download of %s failed (%s); will retry", url, err)
                continue
            digests = {a: h.hexdigest() for a, h in hashers.items()}
            try:
                _check(dest, part.stat().st_size, digests, expected, size, f"download from {url}")
            except DownloadError as err:
                part.unlink()
                errors.append(f"{url}: {err} (partial file removed)")
                alive.remove(url)
                continue
            os.replace(part, dest)
            _write_marker(dest, digests)
            return dest
        if not alive:
            break
    hint = param_hint or "<archive params>"
    cache_key = hint.split(".archives.")[0] + ".cache_dir" if ".archives." in hint else "cache_dir"
    raise DownloadError(
        f"could not fetch {dest.name}. Tried:\n  " + "\n  ".join(errors or ["(no urls)"])
        + f"\nAlternatives: add a working mirror to `{hint}.urls`; or download the file "
        f"yourself and set `{hint}.local_path`; or put a verified copy named {dest.name} in "
        f"the directory set as `{cache_key}`.")


def fetch_archives(archives: Mapping[str, ArchiveConfig], raw_dir: Path, *,
                   cache_dir: Path | None, progress: bool, retries: int, timeout_s: float,
                   backoff_s: float, param_prefix: str | None = None) -> dict[str, Path]:
    """Fetch and verify every archive of a dataset into ``raw_dir/<filename>``.

    With ``cache_dir`` the verified file lives in ``cache_dir/<filename>`` (shared across
    checkouts) and is hard-linked (or copied) into ``raw_dir``.

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
        fetch(list(arc.urls), where, **kwargs)
        if where != target:
            cached = read_marker(where)
            if cached is None or read_marker(target) != {**cached, "file": target.name}:
                target.parent.mkdir(parents=True, exist_ok=True)
                marker_path(target).unlink(missing_ok=True)
                _place(where, target)
                _write_marker(target, {a: cached[a] for a in HASHES if cached and a in cached})
        out[key] = target
    return out
