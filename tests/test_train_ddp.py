"""The same train command runs with DDP (2 CPU processes, gloo): rank 0 writes everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_training import build_tiny, git_repo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_stage_with_two_ddp_processes(tmp_path: Path) -> None:
    tiny = build_tiny(tmp_path / "tiny")
    params = tiny.with_params(
        "ddp", {"train.devices": 2, "train.strategy": "ddp", "train.max_steps": 2}
    )
    work = git_repo(tmp_path / "work")  # dvclive needs a git repository with a commit
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    init = subprocess.run(
        [sys.executable, "-m", "stages.weights", "--params", str(params),
         "--out", str(out / "init")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert init.returncode == 0, init.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", str(params), "--dataset", "synthetic",
         "--init", str(out / "init" / "init_backbone.safetensors"),
         "--data", str(tiny.prepared), "--manifest", str(tiny.manifest),
         "--out", str(out / "models"),
         "--checkpoints", str(out / "ckpt"), "--live", str(out / "live")],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    summary = json.loads((out / "live" / "summary.json").read_text())
    assert summary["steps"] == 2
    for name in (
        "init_backbone.safetensors", "student_backbone.safetensors", "resolved_config.json"
    ):
        assert (out / "models" / name).is_file()
    assert (out / "ckpt" / "final.ckpt").is_file()
    assert not list((out / "models").glob(".*tmp"))  # no half-written files from another rank
