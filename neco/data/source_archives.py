"""Fetch, locate and extract a source's archives for the download and prepare stages (§8).

The download stage writes each verified archive to ``<raw_dir>/<filename>`` (with a
``.verified`` marker, ``neco.download.fetch``). The prepare stage extracts them into
``.<out>.extract/`` next to the prepared tree (never into the tree itself; same convention as
``prepare_coco``) and removes that folder after success.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from neco.config import DownloadConfig
from neco.data.hbird_sets import HbirdSetsConfig
from neco.download.archives import ArchiveConfig
from neco.download.fetch import fetch_archives, read_marker


def fetch_sources(
    archives: Mapping[str, ArchiveConfig],
    raw_dir: Path,
    *,
    cache_dir: str | None,
    download: DownloadConfig,
    progress: bool,
    param_prefix: str,
) -> dict[str, Path]:
    """Fetch and verify ``archives`` into ``raw_dir`` (``neco.download.fetch.fetch_archives``).

    ``download`` is ``runtime.download`` in params (retries, timeout, backoff: cannot change
    any file, so it is not part of the ``datasets.<name>`` block the stages declare).
    """
    return fetch_archives(
        archives, Path(raw_dir), cache_dir=Path(cache_dir) if cache_dir else None,
        progress=progress, retries=download.retries, timeout_s=download.timeout_s,
        backoff_s=download.backoff_s, param_prefix=param_prefix,
    )


def download_stage(source: str | None) -> str:
    """``download@<source>``: the DVC stage that writes ``data/raw/<source>``."""
    return f"download@{source or '<source>'}"


def archive_path(arc: ArchiveConfig, raw_dir: Path, *, source: str | None = None) -> Path:
    """The verified archive ``<raw_dir>/<filename>`` written by the download stage.

    Args:
        arc: the archive's config.
        raw_dir: the download stage's output.
        source: the dataset source (names the stage to run in the error message).

    Raises:
        FileNotFoundError: naming the file, when it is missing or was never verified.
    """
    path = Path(raw_dir) / arc.filename
    stage = download_stage(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: archive not found; run the {stage} stage first "
                                f"(`dvc repro {stage}`)")
    if read_marker(path) is None:
        raise FileNotFoundError(f"{path}: archive has no valid .verified marker; rerun the "
                                f"{stage} stage to verify it (`dvc repro {stage}`)")
    return path


@contextlib.contextmanager
def extract_sources(
    archives: Mapping[str, ArchiveConfig], raw_dir: Path, *, near: Path,
    source: str | None = None,
) -> Iterator[dict[str, Path]]:
    """Extract each archive into ``.<near>.extract/<key>``; yield ``{key: folder}``.

    The extraction folder sits next to the prepared tree ``near`` (never inside it). It is
    kept when the block fails, so a retry skips finished extractions (marker-based no-op,
    ``neco.download.extract``), and removed when the block succeeds.

    Args:
        archives: archive key -> config.
        raw_dir: the download stage's output.
        near: the prepared tree.
        source: the dataset source (for error messages).
    """
    from neco.download.extract import extract_archive

    near = Path(near)
    paths = {k: archive_path(a, raw_dir, source=source) for k, a in archives.items()}
    work = near.parent / f".{near.name}.extract"
    roots = {key: extract_archive(path, work / key) for key, path in paths.items()}
    yield roots
    shutil.rmtree(work, ignore_errors=True)


def archive_sources(
    archives: Mapping[str, ArchiveConfig], hbird_sets: HbirdSetsConfig | None
) -> dict[str, Any]:
    """``meta.json`` ``sources``: archive key -> file name and checksums (+ HB file sets)."""
    out: dict[str, Any] = {k: {"filename": a.filename, "md5": a.md5, "sha1": a.sha1}
                           for k, a in sorted(archives.items())}
    if hbird_sets is not None:
        out["hbird_sets"] = {"base_url": hbird_sets.base_url, "files": sorted(hbird_sets.files)}
    return out
