"""The `refs` stage: files behind `train.weights` / `eval.checkpoint` are content dependencies.

DVC tracks params by value; the always-run `refs` stage turns each file into its sha256, so an
overwritten file changes exactly one small record (and re-runs the stages that read it), while an
unchanged one rewrites identical bytes (and re-runs nothing).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_release import place_in_hf_cache

from neco.models.refs import eval_checkpoint_ref, train_weights_ref
from neco.models.registry import WeightsError

ROOT = Path(__file__).resolve().parents[1]


def test_train_weights_record_follows_the_file_content(tmp_path: Path) -> None:
    assert train_weights_ref(None)["sha256"] is None
    assert train_weights_ref("random") == {"param": "train.weights", "value": "random",
                                           "sha256": None}
    f = tmp_path / "w.pth"
    f.write_bytes(b"one")
    first = train_weights_ref(str(f))
    assert first == train_weights_ref(str(f))  # same bytes, same record
    f.write_bytes(b"two")  # overwritten in place: same path, same params
    assert train_weights_ref(str(f))["sha256"] != first["sha256"]
    with pytest.raises(WeightsError, match=r"train.weights=.*missing.pth: no such file"):
        train_weights_ref(str(tmp_path / "missing.pth"))


def test_eval_checkpoint_record_covers_files_and_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert eval_checkpoint_ref(None, checkpoint_key="student", revision="main")["sha256"] is None
    f = tmp_path / "c.ckpt"
    f.write_bytes(b"x")
    rec = eval_checkpoint_ref(str(f), checkpoint_key="teacher", revision="main")
    assert rec["checkpoint_key"] == "teacher" and len(rec["sha256"]) == 64
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "neco_release:dinov2r_xr_vits14"
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=r"FunAILab/NeCo.*neco_on_dinov2r_xr_vit14_model\.ckpt"):
        eval_checkpoint_ref(name, checkpoint_key="student", revision="main")
    assert time.perf_counter() - t0 < 5.0
    place_in_hf_cache(cache, "vit-small/dinov2-architectures/neco_on_dinov2r_xr_vit14_model.ckpt",
                      {"cls_token": torch.zeros(1)})
    rec = eval_checkpoint_ref(name, checkpoint_key="student", revision="main")
    assert rec["hf_filename"].endswith("neco_on_dinov2r_xr_vit14_model.ckpt")
    assert rec["eval.release_revision"] == "main" and len(rec["sha256"]) == 64


def test_refs_stage_is_always_run_and_wired_to_its_readers() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["refs"]["always_changed"] is True
    assert "models/refs/train_weights.json" in stages["weights"]["deps"]
    for name in ("features", "eval_linear", "eval_overcluster", "eval_hbird"):
        assert "models/refs/eval_checkpoint.json" in stages[name]["do"]["deps"], name


def test_refs_stage_runs_without_torch_and_fast(tmp_path: Path) -> None:
    """It runs on every `dvc repro`: importing torch there would slow every no-op repro."""
    out = tmp_path / "refs"
    code = (
        "import runpy, sys; sys.argv = ['stages.refs', '--params', 'params.yaml', "
        f"'--train-weights', '{out}/t.json', '--eval-checkpoint', '{out}/e.json']; "
        "runpy.run_module('stages.refs', run_name='__main__', alter_sys=True); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "t.json").is_file() and (out / "e.json").is_file()
    assert time.perf_counter() - t0 < 10.0
