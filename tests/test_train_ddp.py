"""The same train command runs with DDP (2 CPU processes, gloo): rank 0 writes everything, and
every rank keeps its own reference queue (``queue_length // world`` rows per bank, not DDP's
rank-0 buffer broadcast) and its own reference RNG stream, both saved per rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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
    for name in ("student_backbone.safetensors", "resolved_config.json"):
        assert (out / "models" / name).is_file()
    assert (out / "ckpt" / "final.ckpt").is_file()
    assert not list((out / "models").glob(".*tmp"))  # no half-written files from another rank

    # Per-rank queues (gathered into the checkpoint by rank): tiny queue_length 64 over 2
    # processes = 32 rows per bank and rank; per step each rank pushes 2 patches x 2 images.
    final = torch.load(out / "ckpt" / "final.ckpt", map_location="cpu", weights_only=False)
    assert final["neco_world_size"] == 2 and not any(k.startswith("queue")
                                                     for k in final["state_dict"])
    queue = final["neco_queue"]
    assert queue["banks"].shape == (2, 2, 32, 16)  # (rank, bank, rows, d)
    assert queue["filled"].tolist() == [[8, 8], [8, 8]] and queue["ptr"].tolist() == [[8, 8]] * 2
    banks = queue["banks"]
    assert (banks[:, :, 8:] == 0).all() and (banks[:, :, :8].norm(dim=-1) > 0.99).all()
    for step in range(2):  # each step's pushes are the rank's own (a broadcast makes them equal)
        rows = slice(4 * step, 4 * step + 4)
        for bank in range(2):
            gap = torch.cdist(banks[0, bank, rows], banks[1, bank, rows]).min()
            assert gap > 1e-4, (step, bank)
    states = final["neco_generator_states"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])  # per-rank streams


@pytest.mark.slow
def test_ddp_sigterm_then_resume_is_exact(tmp_path: Path) -> None:
    """2 ranks, SIGTERM to the launching rank inside epoch 1: every rank stops (exit 143),
    last.ckpt holds both ranks' queues and streams, and the rerun ends bit-identical to an
    uninterrupted 2-rank run."""
    tiny = build_tiny(tmp_path / "tiny")
    params = tiny.with_params("ddp", {"train.devices": 2, "train.strategy": "ddp"})
    work = git_repo(tmp_path / "work")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    init = tmp_path / "init"
    subprocess.run([sys.executable, "-m", "stages.weights", "--params", str(params),
                    "--out", str(init)], cwd=work, env=env, check=True, capture_output=True)

    def args(tag: str) -> list[str]:
        d = tmp_path / tag
        return ["--params", str(params), "--dataset", "synthetic", "--data", str(tiny.prepared),
                "--manifest", str(tiny.manifest),
                "--init", str(init / "init_backbone.safetensors"), "--out", str(d / "models"),
                "--checkpoints", str(d / "ckpt"), "--live", str(d / "live")]

    def stage(tag: str, *, slow: bool = False) -> subprocess.Popen[str]:
        head = ["-m", "tests.fixtures.tiny_training"] if slow else ["-m", "stages.train"]
        return subprocess.Popen([sys.executable, *head, *args(tag)], cwd=work, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    ref = stage("ref")
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]

    proc = stage("cut", slow=True)
    last = tmp_path / "cut" / "ckpt" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "[train] training interrupted by SIGTERM" in err
    assert not (tmp_path / "cut" / "models" / "student_backbone.safetensors").exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["neco_queue"]["banks"].shape[0] == 2

    rerun = stage("cut")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    assert "resuming from" in err
    a = load_file(str(tmp_path / "ref" / "models" / "student_backbone.safetensors"))
    b = load_file(str(tmp_path / "cut" / "models" / "student_backbone.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
