"""Dataset tests: partial downloads go to a per-test download cache, never ``~/.cache``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _download_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``neco.download.fetch.default_download_cache`` follows ``XDG_CACHE_HOME``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
