"""Shared test configuration: offline hub, single thread, markers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Caches (partial downloads, their locks, the weights and hub caches) never touch the user's.
os.environ["XDG_CACHE_HOME"] = os.path.join(
    os.environ.get("PYTEST_TMPDIR", "/tmp"), f"neco-test-cache-{os.getpid()}"
)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: needs --runslow")
    skip_gpu = pytest.mark.skip(reason="gpu: needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
