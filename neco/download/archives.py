"""Configuration of one downloadable archive (datasets.md §1, §8)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveConfig:
    """One archive of a dataset, as written under ``datasets.<name>.archives.<key>`` in params.

    Attributes:
        filename: file name the archive is stored under (e.g. ``VOCtrainval_11-May-2012.tar``).
        urls: mirrors, tried in order.
        md5: expected md5 hex digest, or None.
        sha1: expected sha1 hex digest, or None. At least one of md5/sha1 should be set for
            official sources; fixtures and user mirrors may set either.
        size: expected size in bytes, or None when unknown.
        local_path: an archive the user already has; skips the download, not the verification.
    """

    filename: str
    urls: list[str]
    md5: str | None
    sha1: str | None
    size: int | None
    local_path: str | None
