"""``run_training`` end to end on tiny data: outputs, determinism, resume, final checkpoint."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import neco.train.datamodule as datamodule
from neco.config import ConfigError, RuntimeConfig, load_section, load_value
from neco.models.export import export_from_checkpoint
from neco.models.recipes import load_training
from neco.models.vit import build_backbone
from neco.train.run import run_training
from tests.fixtures.tiny_training import TinySetup, build_tiny, git_repo

torch.set_num_threads(1)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),  # Lightning vs torch
    # the fingerprint file is written before Lightning creates the directory
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]

STEPS = 6  # 12 images / batch 4 = 3 steps per epoch, 2 epochs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinySetup]:
    root = tmp_path_factory.mktemp("tiny_train")
    setup = build_tiny(root)
    with pytest.MonkeyPatch.context() as mp:  # dvclive wants a git repository as working dir
        mp.chdir(git_repo(root / "repo"))
        yield setup


def run(tiny: TinySetup, tag: str, params: Path | None = None) -> dict[str, Any]:
    params = params or tiny.params
    train, crops, resolution = load_training(params)
    return run_training(
        seed=load_value(params, "seed", int),
        train=train,
        crops=crops,
        resolution=resolution,
        images=tiny.images(),
        manifest_path=tiny.manifest,
        out_dir=tiny.root / tag / "out",
        checkpoint_dir=tiny.root / tag / "ckpt",
        live_dir=tiny.root / tag / "live",
        runtime=load_section(params, "runtime", RuntimeConfig),
    )


def crash_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the data loading of ``epoch`` fail, as a preempted or killed job would."""
    original = datamodule.MultiCropDataset.__getitem__

    def getitem(self: datamodule.MultiCropDataset, index: int) -> Any:
        if self.epoch == epoch:
            raise RuntimeError("simulated crash")
        return original(self, index)

    monkeypatch.setattr(datamodule.MultiCropDataset, "__getitem__", getitem)


def student(tiny: TinySetup, tag: str) -> dict[str, torch.Tensor]:
    return load_file(str(tiny.root / tag / "out" / "student_backbone.safetensors"))


def tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"{len(diff)} tensors differ, e.g. {sorted(diff.items())[:3]}"


@pytest.fixture(scope="module")
def reference(tiny: TinySetup) -> dict[str, Any]:
    """The uninterrupted run every other run is compared with."""
    return run(tiny, "ref")


def test_outputs(tiny: TinySetup, reference: dict[str, Any]) -> None:
    out, live, ckpt = (tiny.root / "ref" / d for d in ("out", "live", "ckpt"))
    # init = the seeded random start of vit_tiny_demo; the student moved away from it
    init = load_file(str(out / "init_backbone.safetensors"))
    fresh = build_backbone("vit_tiny_demo", weights="random", cache_dir=None, drop_path_rate=0.0,
                           pos_embed_interp="official", seed=load_value(tiny.params, "seed", int))
    assert_same_weights(init, fresh.vit.state_dict())
    trained = student(tiny, "ref")
    assert trained.keys() == init.keys()
    assert any(not torch.equal(trained[k], init[k]) for k in init)

    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["steps_per_epoch"] == 3 and resolved["backbone"] == "vit_tiny_demo"
    assert resolved["values"]["epochs"] == 2 and resolved["values"]["global_size"] == 32
    assert resolved["origin"]["lr_backbone"] == "params" and len(resolved["fingerprint"]) == 16
    assert resolved["origin"]["momentum_start"] == "params" and not resolved["matches_paper"]
    assert resolved["origin"]["drop_path"] == "recipe"
    assert resolved["deviations"]["train.loss.roi_k"] == {"value": 2, "paper": 7}

    # summary.json: the results; run_training's return adds the run facts (not versioned)
    summary = json.loads((live / "summary.json").read_text())
    assert summary == pytest.approx({k: reference[k] for k in summary})
    assert set(reference) - set(summary) == {
        "s_per_step", "images_per_s", "wall_s", "steps_timed", "resumed"
    }
    assert summary["steps"] == STEPS and summary["epochs"] == 2 and reference["resumed"] is False
    assert summary["initial_loss"] > summary["final_loss"] > 0
    assert summary["first_epoch_mean_loss"] > summary["final_loss_epoch_mean"]

    # the curves dvc.yaml declares as plots (reports/train/plots/metrics/train/*.tsv)
    plots = live / "plots" / "metrics" / "train"
    for name in ("loss", "lr_backbone", "momentum", "weight_decay", "lr_heads"):
        rows = tsv(plots / f"{name}.tsv")
        assert len(rows) == STEPS and set(rows[0]) == {"step", name}, name
    losses = [float(r["loss"]) for r in tsv(plots / "loss.tsv")]
    assert losses[0] == pytest.approx(summary["initial_loss"])
    assert losses[-1] == pytest.approx(summary["final_loss"])
    lrs = [float(r["lr_backbone"]) for r in tsv(plots / "lr_backbone.tsv")]
    assert lrs[0] == pytest.approx(1e-4) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert len(tsv(plots / "epoch_loss.tsv")) == 2

    # completed: the final state is final.ckpt, nothing is left to resume from
    assert sorted(p.name for p in ckpt.iterdir()) == ["final.ckpt", "last.fingerprint"]


def test_same_params_same_result(tiny: TinySetup, reference: dict[str, Any]) -> None:
    again = run(tiny, "again")
    for key in ("initial_loss", "final_loss", "first_epoch_mean_loss", "final_loss_epoch_mean"):
        assert again[key] == reference[key], key
    assert_same_weights(student(tiny, "again"), student(tiny, "ref"))
    plots = Path("plots") / "metrics" / "train" / "loss.tsv"
    assert tsv(tiny.root / "again" / "live" / plots) == tsv(tiny.root / "ref" / "live" / plots)


def test_resume_after_a_crash_is_exact(
    tiny: TinySetup, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in epoch 2, rerun with the same params: resumes from last.ckpt, ends identical."""
    with monkeypatch.context() as mp:
        crash_in_epoch(mp, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(tiny, "resume")
    ckpt = tiny.root / "resume" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt", "last.fingerprint"]
    last = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    assert not (tiny.root / "resume" / "out" / "student_backbone.safetensors").exists()

    resumed = run(tiny, "resume")
    assert resumed["resumed"] is True and resumed["steps"] == STEPS
    for key in ("initial_loss", "final_loss", "first_epoch_mean_loss", "final_loss_epoch_mean"):
        assert resumed[key] == reference[key], key
    assert_same_weights(student(tiny, "resume"), student(tiny, "ref"))
    # dvclive continues the curves: one row per step, the same values
    plots = Path("plots") / "metrics" / "train" / "loss.tsv"
    assert tsv(tiny.root / "resume" / "live" / plots) == tsv(tiny.root / "ref" / "live" / plots)
    assert sorted(p.name for p in ckpt.iterdir()) == ["final.ckpt", "last.fingerprint"]


def test_changed_config_does_not_resume_and_final_ckpt_is_final(
    tiny: TinySetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last.ckpt of other params is discarded; final.ckpt holds the end state even when no
    periodic checkpoint was written (checkpoint_every_n_epochs > epochs)."""
    with monkeypatch.context() as mp:
        crash_in_epoch(mp, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(tiny, "changed")
    ckpt = tiny.root / "changed" / "ckpt"
    assert (ckpt / "last.ckpt").is_file()
    params = tiny.with_params(
        "changed", {"train.lr_heads": 2.0e-4, "runtime.train.checkpoint_every_n_epochs": 5}
    )
    summary = run(tiny, "changed", params)
    assert summary["resumed"] is False and summary["steps"] == STEPS
    assert sorted(p.name for p in ckpt.iterdir()) == ["final.ckpt", "last.fingerprint"]
    final = torch.load(ckpt / "final.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == STEPS and final["epoch"] == 2
    # final.ckpt's student is the exported student (neco.models.export's reader of our checkpoints)
    exported = tiny.root / "changed" / "x.safetensors"
    export_from_checkpoint(ckpt / "final.ckpt", "vit_tiny_demo", exported,
                           prefix="student.backbone.", fmt="ours", pos_embed_interp=None)
    assert_same_weights(load_file(str(exported)), student(tiny, "changed"))


def test_max_steps_run_is_complete_and_not_resumed(
    tiny: TinySetup, reference: dict[str, Any]
) -> None:
    """Design (neco/train/run.py): max_steps is part of the fingerprint and a run it stops counts as
    complete, so a later full run starts from scratch (and still matches the reference)."""
    short = tiny.with_params("short", {"train.max_steps": 3})
    summary = run(tiny, "short", short)
    ckpt = tiny.root / "short" / "ckpt"
    assert summary["steps"] == 3 and summary["resumed"] is False
    assert sorted(p.name for p in ckpt.iterdir()) == ["final.ckpt", "last.fingerprint"]
    full = run(tiny, "short")
    assert full["resumed"] is False and full["final_loss"] == reference["final_loss"]


def test_runtime_knobs_do_not_invalidate_a_resume(
    tiny: TinySetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runtime.*`` cannot change the weights, so changing it keeps the checkpoint resumable."""
    with monkeypatch.context() as mp:
        crash_in_epoch(mp, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(tiny, "knobs")
    params = tiny.with_params(
        "knobs", {"runtime.train.log_every_n_steps": 2, "runtime.eval.features_batch_size": 3}
    )
    summary = run(tiny, "knobs", params)
    assert summary["resumed"] is True and summary["steps"] == STEPS


def test_num_nodes_sets_the_world_size(tiny: TinySetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.num_nodes reaches the Trainer; world = devices x num_nodes sizes the per-device
    queue (queue_length // world) and the batch split, and the checkpoints are atomic."""
    import neco.train.run as run_mod

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def trainer(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    real_module = run_mod.NeCoModule

    def module(**kwargs: Any) -> Any:
        seen["module"] = real_module(**kwargs)
        return seen["module"]

    monkeypatch.setattr(run_mod.pl, "Trainer", trainer)
    monkeypatch.setattr(run_mod, "NeCoModule", module)
    params = tiny.with_params("nodes", {"train.num_nodes": 2, "train.strategy": "ddp"})
    with pytest.raises(Stop):
        run(tiny, "nodes", params)
    assert seen["num_nodes"] == 2 and seen["devices"] == 1 and seen["strategy"] == "ddp"
    assert seen["module"].world_size == 2 and seen["module"].queue.banks.shape == (2, 32, 16)
    assert any(isinstance(p, run_mod.AtomicCheckpointIO) for p in seen["plugins"])
    bad = tiny.with_params("nodes0", {"train.num_nodes": 0})
    with pytest.raises(ConfigError, match="train.num_nodes = 0"):
        run(tiny, "nodes0", bad)
    odd = tiny.with_params("nodes3", {"train.num_nodes": 3, "train.strategy": "ddp"})
    with pytest.raises(ValueError, match="not divisible by 3 devices"):
        run(tiny, "nodes3", odd)


def test_slurm_uses_lightnings_environment_without_auto_requeue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under srun Lightning's SLURMEnvironment is used, with its mid-epoch auto-requeue
    checkpoint (SIGUSR1, not exact to resume from) off; elsewhere nothing is added."""
    from lightning_fabric.plugins.environments.slurm import SLURMEnvironment

    from neco.train.run import cluster_plugins

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "neco")
    (env,) = cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False


def test_teacher_is_exported_next_to_the_student(tiny: TinySetup) -> None:
    """The EMA teacher is a DVC output too (queued experiments discard the checkpoint dir)."""
    run(tiny, "teacher")
    out = tiny.root / "teacher" / "out"
    teacher = load_file(str(out / "teacher_backbone.safetensors"))
    ckpt = torch.load(tiny.root / "teacher" / "ckpt" / "final.ckpt", map_location="cpu",
                      weights_only=False)
    expected = {k[len("teacher.backbone.vit."):]: v for k, v in ckpt["state_dict"].items()
                if k.startswith("teacher.backbone.vit.")}
    assert teacher.keys() == expected.keys()
    assert all(torch.equal(teacher[k], expected[k]) for k in teacher)
