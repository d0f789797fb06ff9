"""End to end: copy the repository, shrink params, `dvc repro`, no-op rerun, `dvc exp run -S`.

This is the CPU smoke experiment of the whole DAG (STYLE §3): every stage runs on a tiny
synthetic dataset with the tiny ViT; then `dvc status` is clean, a second `dvc repro` runs
nothing, and an experiment that changes a training param shows changed numbers in
`dvc metrics diff`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "datasets.synthetic.generator.num_train": 16,
    "datasets.synthetic.generator.num_val": 6,
    "datasets.synthetic.generator.sizes": [64, 80],
    "pretrain.steps": 3,
    "pretrain.num_images": 8,
    "pretrain.batch_size": 4,
    "pretrain.warmup_steps": 1,
    "pretrain.global_size": 32,
    "crops.global_size": 32,
    "crops.local_size": 16,
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.head.hidden_dim": 32,
    "train.head.out_dim": 16,
    "train.loss.roi_k": 2,
    "train.loss.n_refs": 4,
    "train.loss.queue_length": 64,
    "train.loss.queue_push_per_image": 2,
    "eval.features.input_size": 32,
    "eval.linear.input_size": 32,
    "eval.linear.mask_size": 16,
    "eval.linear.eval_mask_size": 16,
    "eval.linear.epochs": 2,
    "eval.linear.batch_size": 8,
    "eval.overcluster.input_size": 32,
    "eval.overcluster.mask_size": 16,
    "eval.overcluster.ks": [14],
    "eval.overcluster.seeds": [0, 1],
    "eval.overcluster.nredo": 1,
    "eval.hbird.input_size": 32,
    "eval.hbird.k": 5,
    "eval.hbird.fractions": ["1/1", "1/8"],
    "eval.hbird.subset_seeds": [42, 400],
}


def _set(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = params
    for p in parents:
        node = node[p]
    assert leaf in node, dotted
    node[leaf] = value


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if not src.is_file() or (rel.startswith(("reports/", "bench/"))
                                 and rel != "reports/demo_study.json"):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (Path(sys.executable).parent / "dvc").exists():
        pytest.skip("needs git and dvc in the venv")
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    _copy_repo(dst)
    # params.yaml is generated from conf/ (every `dvc exp run` recomposes it): the tiny values go
    # into the demo preset of the copy, then params.yaml is composed from it.
    demo = dst / "conf" / "preset" / "demo.yaml"
    preset = yaml.safe_load(demo.read_text())
    full = yaml.safe_load((dst / "params.yaml").read_text())
    for key, value in TINY.items():
        _set(full, key, value)  # the key must exist in params.yaml
        _put(preset, key, value)
    demo.write_text("# @package _global_\n" + yaml.safe_dump(preset, sort_keys=False))
    _run([sys.executable, "-m", "neco", "compose"], dst)
    assert yaml.safe_load((dst / "params.yaml").read_text()) == full
    _run(["git", "init", "-q"], dst)
    _run(["git", "add", "-A"], dst)
    _run(["git", "commit", "-qm", "tiny"], dst)
    return dst


def test_repro_runs_every_stage_and_is_idempotent(repo: Path) -> None:
    out = _run(["dvc", "repro"], repo)
    for stage in ("refs", "pretrain", "weights", "download@synthetic", "prepare@synthetic",
                  "crops", "train",
                  "features@synthetic", "eval_linear@synthetic", "eval_overcluster@synthetic",
                  "eval_hbird@synthetic", "report"):
        assert f"Running stage '{stage}'" in out, stage
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for key in ("linear.synthetic.init.miou", "linear.synthetic.neco.miou", "train.final_loss"):
        assert key in metrics, sorted(metrics)
    tables = (repo / "reports/tables.md").read_text()
    assert "Linear segmentation" in tables and "Hummingbird" in tables
    assert "## Pretraining" in tables and "masked_hog" in tables
    for fig in ("pretrain_loss", "training_loss", "linear_synthetic", "overcluster_synthetic",
                "hbird_synthetic"):
        assert (repo / f"reports/figures/{fig}.png").stat().st_size > 1000
    # Only `refs` (always run: it hashes the files behind weight params) reports a change.
    status = _run(["dvc", "status"], repo)
    assert status.split() == ["refs:", "always", "changed"], status
    again = _run(["dvc", "repro"], repo)
    ran = [line for line in again.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'refs':"], again
    # Reruns are byte-identical: rerunning every stage from scratch changes no tracked file
    # (dvc.lock, metrics, tables, curves); wall times live in the git-ignored reports/timings.
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "first run"], repo)
    _run(["dvc", "repro", "-f"], repo)
    assert _run(["git", "status", "--porcelain"], repo) == "", "outputs changed on a rerun"
    assert (repo / "reports/timings/train.json").is_file()


def test_exp_run_changes_metrics(repo: Path) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline results", "--allow-empty"], repo)
    out = _run(
        ["dvc", "exp", "run", "-S", "train.lr_heads=0.01", "-S", "train.lr_backbone=0.001"], repo
    )
    assert "Running stage 'train'" in out
    assert "Running stage 'crops'" not in out  # the manifest does not depend on learning rates
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], repo))
    changed = diff["reports/metrics.json"]
    assert "train.final_loss" in changed and changed["train.final_loss"]["diff"] != 0, changed


def test_exp_run_with_unavailable_backbone_weights_fails_fast(repo: Path, tmp_path: Path) -> None:
    """Offline, `dvc exp run -S train.backbone=dinov2_vitb14` fails within seconds with the URL
    and the `train.weights` hint (the weights stage runs first and imports no torch)."""
    args = ["dvc", "exp", "run", "-S", "train.backbone=dinov2_vitb14",
            "-S", f"train.weights_cache={tmp_path / 'empty-cache'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=repo, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth" in out
    assert "train.weights" in out and "Traceback" not in out
    assert elapsed < 20.0, f"took {elapsed:.1f} s"  # dvc exp setup + refs + weights (2 busy cores)


@pytest.mark.slow
def test_queued_experiments_run_in_parallel_and_keep_their_models(repo: Path) -> None:
    """`dvc exp run --queue` x2 + `dvc queue start -j 2`: two isolated workspaces, nothing
    written to shared paths outside them, and each experiment's models (student and teacher)
    come back with `dvc exp apply` (they are DVC outputs, not a side directory)."""
    cache_home = Path(os.environ["XDG_CACHE_HOME"])
    before = sorted(p for p in cache_home.rglob("*") if p.is_file()) if cache_home.exists() else []
    # The failed offline `exp run` above leaves its params in the workspace (DVC behaviour):
    # queue from the committed state.
    _run(["git", "checkout", "--", "."], repo)
    _run(["dvc", "checkout", "--force"], repo)
    for name, lr in (("q-a", "0.002"), ("q-b", "0.004")):
        _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr_heads={lr}"], repo)
    _run(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.time() + 1200
    while time.time() < deadline:
        status = _run(["dvc", "queue", "status"], repo)
        if not any(s in status for s in ("Queued", "Running")):
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    finals = {}
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for executed in exp.get("revs", []):
                name = executed.get("name")
                data = executed.get("data", {})
                metrics = data.get("metrics", {}).get("reports/metrics.json", {}).get("data", {})
                if name in ("q-a", "q-b"):
                    finals[name] = metrics.get("train.final_loss")
    assert set(finals) == {"q-a", "q-b"} and finals["q-a"] != finals["q-b"], finals
    after = sorted(p for p in cache_home.rglob("*") if p.is_file()) if cache_home.exists() else []
    assert after == before, "queued experiments wrote to a shared cache outside the workspaces"
    _run(["dvc", "exp", "apply", "q-b"], repo)
    for name in ("student_backbone.safetensors", "teacher_backbone.safetensors"):
        assert (repo / "models" / "neco" / name).is_file(), name
    applied = json.loads((repo / "reports" / "metrics.json").read_text())
    assert applied["train.final_loss"] == finals["q-b"]


def _fails_fast(repo: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=repo, env={**_env(), **(env or {})}, capture_output=True,
                          text=True)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out[-3000:]
    assert elapsed < 20.0, f"took {elapsed:.1f} s"  # dvc exp setup + refs + weights stages
    return out


def test_paper_preset_offline_fails_within_seconds_naming_what_to_fetch(repo: Path,
                                                                      tmp_path: Path) -> None:
    """Acceptance (issue 10): `dvc exp run -S preset=paper` offline names the file and the
    place, before any download starts (`refs` and `weights` are the first stages)."""
    out = _fails_fast(repo, ["dvc", "exp", "run", "-S", "preset=paper",
                             "-S", f"train.weights_cache={tmp_path / 'empty'}"])
    assert ("https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/"
            "dinov2_vits14_reg4_pretrain.pth") in out
    assert "train.weights" in out and "Running stage 'download@voc'" not in out
    # the failed run leaves its composed params in the workspace (DVC behaviour): exactly the
    # composition of conf/ with the preset and the override, in the committed file's form
    sys.path.insert(0, str(ROOT))
    from neco.config.presets import params_text

    want = params_text(repo / "conf", ["preset=paper", f"train.weights_cache={tmp_path / 'empty'}"])
    assert (repo / "params.yaml").read_text() == want
    _run(["git", "checkout", "--", "params.yaml"], repo)


def test_release_checkpoint_offline_fails_naming_the_hf_file(repo: Path, tmp_path: Path) -> None:
    """Acceptance (issue 11): evaluating a release offline names the HF file and where to put
    it, within seconds."""
    out = _fails_fast(
        repo, ["dvc", "exp", "run", "-S", "preset=paper", "-S", "train.max_steps=0",
               "-S", "eval.checkpoint=neco_release:dinov2r_xr_vits14"],
        env={"HF_HUB_CACHE": str(tmp_path / "hf-empty")})
    assert "vit-small/dinov2-architectures/neco_on_dinov2r_xr_vit14_model.ckpt" in out
    assert "FunAILab/NeCo" in out and "eval.checkpoint" in out
    _run(["git", "checkout", "--", "params.yaml"], repo)


#: The paper preset shrunk to CPU-test size, keeping its backbone, its datasets' role and its
#: protocol set (Hydra overrides, as a user would pass them).
TINY_PAPER = [
    "preset=paper", "train.backbone=dinov2_vits14_xr", "train.max_steps=0",
    "eval.checkpoint=neco_release:dinov2r_xr_vits14", "data.sources=[synthetic]",
    "data.train=synthetic", "~eval.datasets.voc", "~eval.datasets.ade20k",
    "~eval.datasets.coco_things", "~eval.datasets.coco_stuff", "+eval.datasets.synthetic=synthetic",
    "train.accelerator=cpu", "train.augment_device=cpu", "runtime.num_workers=0",
    "train.batch_size=4", "train.epochs=1", "crops.global_size=56", "crops.local_size=28",
    "eval.features.input_size=56", "eval.linear.input_size=56", "eval.linear.mask_size=14",
    "eval.linear.eval_mask_size=14", "eval.linear.epochs=1", "eval.linear.batch_size=8",
    "eval.overcluster.input_size=56", "eval.overcluster.mask_size=14", "eval.overcluster.ks=[14]",
    "eval.overcluster.seeds=[0]", "eval.overcluster.nredo=1", "eval.hbird.input_size=56",
    "eval.hbird.k=5", "eval.hbird.fractions=[1/1]",
]


def test_release_checkpoint_is_evaluated_end_to_end_from_the_hf_cache(repo: Path,
                                                                      tmp_path: Path) -> None:
    """Acceptance (issue 11): with a fixture release file where the HF cache expects it, the
    paper-preset command evaluates it through every stage (tiny settings), and the metrics
    record its sha256 and HF source; the XR backbone's paper baseline is evaluated too."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from official_formats import dinov2_hub_file, neco_release_file
    from test_release import place_in_hf_cache

    from neco.io import sha256_file

    cache = tmp_path / "hf-hub"
    obj, _ = neco_release_file("dinov2", "student", seed=5)
    release = place_in_hf_cache(
        cache, "vit-small/dinov2-architectures/neco_on_dinov2r_xr_vit14_model.ckpt", obj)
    hub, _ = dinov2_hub_file(registers=4, seed=6)
    weights = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(hub, weights)
    args = ["dvc", "exp", "run", *(a for o in TINY_PAPER for a in ("-S", o)),
            "-S", f"train.weights={weights}"]
    proc = subprocess.run(args, cwd=repo, env={**_env(), "HF_HUB_CACHE": str(cache)},
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "no optimisation step was run" in out
    linear = json.loads((repo / "reports/metrics/linear/synthetic.json").read_text())
    assert set(linear["models"]) == {"init", "neco", "baseline"}
    prov = linear["models"]["neco"]["provenance"]["weights"]
    assert prov["sha256"] == sha256_file(release)
    assert prov["source"].startswith("hf://FunAILab/NeCo/vit-small/dinov2-architectures/")
    assert linear["config"]["preset"] == "paper"
    assert linear["config"]["values"]["eval.linear.input_size"]["differs"] is True
    tables = (repo / "reports/tables.md").read_text()
    assert "DINOv2R" in tables
    _run(["git", "checkout", "--", "."], repo)  # the last test of the module: params back
