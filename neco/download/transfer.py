"""One HTTP(S) transfer with Range resume, and the error taxonomy of retries (datasets.md §8).

``neco.download.fetch.fetch`` decides *whether* to retry from the two exception types raised here:
``FatalError`` (unknown host, connection refused by a remote host, 4xx except 408/429, HTML
error pages, wrong announced size) and ``TransientError`` (timeouts, resets, 5xx, truncated
bodies). Standard library plus ``tqdm`` for the progress bar.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "neco-pipeline (python urllib)"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class FatalError(Exception):
    """An error that retrying the same URL cannot fix."""


class TransientError(Exception):
    """An error worth retrying (timeouts, resets, 5xx, truncated bodies)."""


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith(b"<!doctype html") or start.startswith(b"<html")


def classify_error(url: str, err: BaseException) -> Exception:
    """Map a urllib/socket error to FatalError (do not retry this URL) or TransientError."""
    if isinstance(err, urllib.error.HTTPError):
        if 400 <= err.code < 500 and err.code not in (408, 429):
            return FatalError(f"HTTP {err.code} {err.reason}")
        return TransientError(f"HTTP {err.code} {err.reason}")
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, (str, ValueError)):
        return FatalError(f"bad URL: {reason}")
    if isinstance(reason, ssl.SSLCertVerificationError):
        return FatalError(f"TLS certificate rejected: {reason}")
    if isinstance(reason, (FileNotFoundError, PermissionError)):  # file:// mirrors
        return FatalError(f"{type(reason).__name__}: {reason}")
    if isinstance(reason, socket.gaierror):
        return FatalError(f"cannot resolve host ({reason}); offline or wrong URL")
    if isinstance(reason, ConnectionRefusedError):
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in LOCAL_HOSTS:
            return FatalError(f"connection refused by {host}")
    return TransientError(f"{type(reason).__name__}: {reason}")


def _open(url: str, offset: int, timeout_s: float) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            err.close()
            return None  # the .part is unusable for this server: restart from 0
        raise classify_error(url, err) from err
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as err:
        raise classify_error(url, err) from err


def transfer(url: str, part: Path, hashers: dict[str, Any], *, size: int | None,
             timeout_s: float, progress: bool, name: str | None = None) -> None:
    """Append the body of ``url`` to ``part``, resuming from its length with ``Range``.

    A 206 answer is appended (its ``Content-Range`` must start at the current length); a 200
    answer to a Range request (server ignores ranges) or a 416 restarts from byte 0.

    Args:
        url: http(s) or file URL.
        part: the partial file; created if missing.
        hashers: ``hashlib`` objects by algorithm that already cover the bytes in ``part``;
            updated in place (and reset on restart).
        size: expected total size in bytes, or None.
        timeout_s: socket timeout per connect/read, seconds.
        progress: show a progress bar on stderr.
        name: label of the progress bar (the final file name); default ``part``'s name.

    Raises:
        FatalError: retrying this URL cannot help (4xx, unknown host, HTML page, wrong size);
            a partial HTML page is deleted.
        TransientError: worth retrying (timeouts, resets, 5xx, truncated body); the partial
            file is kept for a later resume.
        OSError: writing ``part`` failed (e.g. the disk is full); the bytes written are kept.
    """
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, timeout_s)
    if resp is None or (offset and resp.status != 206):
        if resp is not None:
            log.info("%s ignored the Range request (HTTP %s); restarting", url, resp.status)
        else:
            resp = _open(url, 0, timeout_s)
        offset = 0
        part.unlink(missing_ok=True)
        for algo in hashers:
            hashers[algo] = hashlib.new(algo)
    with resp:
        if offset:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {offset}-"):
                part.unlink(missing_ok=True)
                raise TransientError(f"unexpected Content-Range {crange!r} for resume at {offset}")
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if ctype.startswith("text/html"):
            raise FatalError("server returned an HTML page (Content-Type text/html), not the file")
        length = resp.headers.get("Content-Length")
        remaining = int(length) if length is not None and length.isdigit() else None
        if size is not None and remaining is not None and offset + remaining != size:
            raise FatalError(f"server announces {offset + remaining} bytes, expected {size}")
        total = size or (offset + remaining if remaining else None)
        got, first = 0, offset == 0
        with tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                  desc=name or part.name.removesuffix(".part"), file=sys.stderr, leave=False,
                  disable=not progress) as bar:
            with open(part, "ab") as out:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, HTTPException) as err:
                        raise TransientError(f"read failed after {offset + got} bytes: "
                                         f"{type(err).__name__}: {err}") from err
                    if not block:
                        break
                    if first and _looks_like_html(block):
                        out.close()
                        part.unlink()
                        raise FatalError("server returned an HTML page, not the file")
                    first = False
                    out.write(block)
                    for h in hashers.values():
                        h.update(block)
                    got += len(block)
                    bar.update(len(block))
        if remaining is not None and got < remaining:
            raise TransientError(f"truncated body: got {offset + got} of {offset + remaining} "
                                 "bytes")
