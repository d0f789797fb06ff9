"""Weight sources and file resolution for the backbone registry (method.md §12, D2).

A :class:`WeightSource` says where a backbone's initial weights come from: official URLs
(downloaded once into a cache directory; every registered pretrained backbone has one), a local
file only (for sources without a public URL; none is registered now), or random initialisation
(the CPU demo). ``train.weights`` (a local file) always overrides the source. No publisher gives
checksums, so registry ``sha256`` values are ``None``; the load report of every backbone records
the sha256 of the file actually read. Released NeCo checkpoints come from the Hugging Face hub
instead (:mod:`neco.models.release`).

Offline behaviour: before any download, the URL hosts are resolved with a short timeout. If
none resolves, :class:`WeightsError` is raised at once (no retries), naming the URL, the cache
file to place and the ``train.weights`` override. Download failures from
:func:`neco.download.fetch.fetch` are re-raised the same way.

The key maps that turn each official format into timm names live in
:mod:`neco.models.checkpoints`; :func:`load_checkpoint` reads files with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from neco.io import sha256_file
from neco.models.registry import CACHE_PARAM, OVERRIDE_PARAM, SourceKind, WeightsError, WeightSource

# torch is imported inside the functions that need it, so that the offline weights check of the
# train stage (which runs before anything heavy is imported) stays fast.

_log = logging.getLogger(__name__)

#: Names of the params that override the registry source; quoted in every error message.

#: Download knobs: they cannot change results (a file either verifies or fails), so they are
#: module constants rather than params (STYLE P1 covers result-changing values only).
DNS_TIMEOUT_S = 3.0
DOWNLOAD_RETRIES = 3
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_BACKOFF_S = 2.0


def host_resolves(host: str, timeout_s: float) -> bool:
    """Whether ``host`` resolves within ``timeout_s`` (a hung resolver counts as failure).

    The lookup runs in a daemon thread, so a hung resolver delays neither the caller nor the
    interpreter's exit.
    """
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except (OSError, UnicodeError):
            result.append(False)

    thread = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def weights_cache_dir(value: str | None) -> Path:
    """``train.weights_cache``, or ``$XDG_CACHE_HOME/neco/weights`` (``~/.cache/...``) when null."""
    if value is not None:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neco" / "weights"


def _fetch_hint(name: str, source: WeightSource, dest: Path) -> str:
    return (
        f"Download it elsewhere and place it at {dest}, or set {OVERRIDE_PARAM}=<local path "
        f"to {source.filename}> (a file in the official format of {name!r}), or "
        f"{OVERRIDE_PARAM}=random for random initialisation."
    )


def resolve_weights_file(
    name: str,
    source: WeightSource,
    *,
    cache_dir: Path | None,
    progress: bool,
    dns_timeout_s: float = DNS_TIMEOUT_S,
) -> Path:
    """Path of the official weights of backbone ``name``, downloading into ``cache_dir`` once.

    Args:
        name: registry name (for messages).
        source: the registry's weight source.
        cache_dir: directory holding downloaded files (``train.weights_cache``).
        progress: show a download progress bar.
        dns_timeout_s: how long host resolution may take before the host counts as offline.

    Raises:
        WeightsError: no URL is known, no cache directory is set, the hosts do not resolve
            (offline; raised within ``dns_timeout_s``) or the download fails. The message names
            the URL(s) and the ``train.weights`` override.
    """
    if source.kind is SourceKind.RANDOM:
        raise WeightsError(f"backbone {name!r} has no weight file (random initialisation only)")
    if source.kind is SourceKind.LOCAL_ONLY:
        raise WeightsError(
            f"backbone {name!r}: no public weight URL is known to this project ({source.note}). "
            f"Set {OVERRIDE_PARAM}=<local path to {source.filename}>, or {OVERRIDE_PARAM}=random."
        )
    if source.filename is None or not source.urls:
        raise WeightsError(f"backbone {name!r}: url source without urls/filename: {source}")
    urls = ", ".join(source.urls)
    if cache_dir is None:
        raise WeightsError(
            f"backbone {name!r}: weights come from {urls} but no cache directory is set; set "
            f"{CACHE_PARAM}=<dir>, or {OVERRIDE_PARAM}=<local path to {source.filename}>."
        )
    dest = Path(cache_dir) / source.filename
    if dest.is_file():
        if source.sha256 is not None and sha256_file(dest) != source.sha256:
            raise WeightsError(
                f"{dest}: sha256 does not match the registry value {source.sha256} for {name!r}; "
                f"delete the file to re-download it from {urls}."
            )
        return dest
    hosts = sorted({urlparse(u).hostname or "" for u in source.urls})
    if not any(h and host_resolves(h, dns_timeout_s) for h in hosts):
        raise WeightsError(
            f"backbone {name!r}: cannot download {urls}: host(s) {hosts} do not resolve "
            f"(offline?). " + _fetch_hint(name, source, dest)
        )
    from neco.download.fetch import DownloadError, fetch  # lazy: keeps the GPU hot path light

    _log.info("downloading weights of %s from %s to %s", name, urls, dest)
    try:
        return Path(
            fetch(
                list(source.urls),
                dest,
                sha256=source.sha256,
                retries=DOWNLOAD_RETRIES,
                timeout_s=DOWNLOAD_TIMEOUT_S,
                backoff_s=DOWNLOAD_BACKOFF_S,
                progress=progress,
            )
        )
    except (DownloadError, OSError) as err:
        raise WeightsError(
            f"backbone {name!r}: download of {urls} failed: {err}. "
            + _fetch_hint(name, source, dest)
        ) from err
