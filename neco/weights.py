"""Weight sources and file resolution for the backbone registry (method.md §12, D2).

A :class:`WeightSource` says where a backbone's initial weights come from: official URLs
(downloaded once into a cache directory), a local file only (no public URL is known to the
spec), or random initialisation (the CPU demo). ``train.weights`` (a local file) always
overrides the source.

Offline behaviour: before any download, the URL hosts are resolved with a short timeout. If
none resolves, :class:`WeightsError` is raised at once (no retries), naming the URL, the cache
file to place and the ``train.weights`` override. Download failures from
:func:`neco.download.fetch` are re-raised the same way.

The key maps that turn each official format into timm names live in
:mod:`neco.key_maps`; :func:`load_checkpoint` reads files with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# torch is imported inside the functions that need it, so that the offline weights check of the
# train stage (which runs before anything heavy is imported) stays fast.

_log = logging.getLogger(__name__)

#: Names of the params that override the registry source; quoted in every error message.
OVERRIDE_PARAM = "train.weights"
CACHE_PARAM = "train.weights_cache"

#: Download knobs: they cannot change results (a file either verifies or fails), so they are
#: module constants rather than params (STYLE P1 covers result-changing values only).
DNS_TIMEOUT_S = 3.0
DOWNLOAD_RETRIES = 3
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_BACKOFF_S = 2.0

#: Globals allowed while unpickling with ``weights_only=True``. DINO/iBOT full checkpoints
#: store their argparse ``args``; nothing else is trusted.
_SAFE_GLOBALS: dict[str, Any] = {"argparse.Namespace": argparse.Namespace}


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched, read or mapped; the message says what to do."""


class SourceKind(str, enum.Enum):
    """Where a registered backbone's initial weights come from."""

    URL = "url"
    LOCAL_ONLY = "local_only"
    RANDOM = "random"


@dataclass(frozen=True)
class WeightSource:
    """Initial weights of one registered backbone.

    Attributes:
        kind: url, local_only or random.
        urls: mirrors tried in order (empty unless ``kind`` is url).
        filename: cache file name under the cache directory (url kind), or the expected
            official file name (local_only kind, for the error message).
        sha256: checksum of the file, when published or verified; ``None`` if unknown.
        note: provenance (spec section) or why no URL is known.
    """

    kind: SourceKind
    urls: tuple[str, ...]
    filename: str | None
    sha256: str | None
    note: str


def url_source(url: str, *, note: str, sha256: str | None = None) -> WeightSource:
    """A single-URL source whose cache file name is the URL's basename."""
    return WeightSource(
        kind=SourceKind.URL,
        urls=(url,),
        filename=Path(urlparse(url).path).name,
        sha256=sha256,
        note=note,
    )


def local_source(filename: str, *, note: str) -> WeightSource:
    """A source with no known public URL: the user must pass ``train.weights``."""
    return WeightSource(
        kind=SourceKind.LOCAL_ONLY, urls=(), filename=filename, sha256=None, note=note
    )


RANDOM_SOURCE = WeightSource(
    kind=SourceKind.RANDOM, urls=(), filename=None, sha256=None, note="random initialisation"
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    from neco.download import DownloadError, fetch  # lazy: keeps the GPU hot path light

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


@contextlib.contextmanager
def _allowed_globals(names: Sequence[str]) -> Iterator[None]:
    import torch

    objs = [_SAFE_GLOBALS[n] for n in names]
    if not objs:
        yield
        return
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is not None:  # torch >= 2.5
        with ctx(objs):
            yield
    else:  # torch 2.4: process-wide allow-list (only argparse.Namespace is ever added)
        torch.serialization.add_safe_globals(objs)
        yield


def load_checkpoint(path: Path, *, safe_globals: Sequence[str]) -> Any:
    """Read a weight file without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., map_location="cpu", weights_only=True)``.

    Args:
        path: the file.
        safe_globals: names from the allow-list (``argparse.Namespace``) the format needs.

    Raises:
        WeightsError: missing file, or a pickle needing a global outside the allow-list.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found (from {OVERRIDE_PARAM} or the cache)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with _allowed_globals(safe_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        detail = " ".join(str(err).split())
        raise WeightsError(
            f"{path}: cannot read the checkpoint with torch.load(weights_only=True): {first} "
            f"[{detail[:600]}]. Arbitrary pickled objects are refused; extract the state dict "
            f"with a trusted script and save it with torch.save(state_dict)."
        ) from err


def load_neco_checkpoint(path: Path, name: str, *, which: str, pos_embed_interp: Any) -> Any:
    """Alias of :func:`neco.backbones.load_neco_checkpoint` (imported lazily: no cycle)."""
    from neco.backbones import load_neco_checkpoint as _load

    return _load(path, name, which=which, pos_embed_interp=pos_embed_interp)
