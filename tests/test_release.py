"""Released NeCo checkpoints as named sources (HF ``FunAILab/NeCo``), end to end and offline.

A fixture release file is written where ``hf_hub_download`` expects it (``HF_HUB_CACHE`` set to
a temporary directory, the hub cache layout ``models--FunAILab--NeCo/snapshots/<commit>/<file>``
plus ``refs/<revision>``), then loaded through ``neco.evals.models`` as ``eval.checkpoint:
neco_release:<name>``. Nothing here touches the network.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from official_formats import neco_release_file, to_timm

from neco.cli import run_stage
from neco.config import EvalConfig, load_section
from neco.evals.models import load_eval_backbone, load_for_eval, model_weights_path
from neco.io import sha256_file
from neco.models import release as R
from neco.models.checkpoints import release_arch_of
from neco.models.recipes import load_training
from neco.models.registry import BACKBONES, WeightsError

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"

#: The NeCo README table (vpariza/NeCo @ 3932160): name -> (backbone, file stem, architecture).
EXPECTED = {
    "dinov2_vits14": ("dinov2_vits14", "vit-small/dinov2-architectures/neco_on_dinov2_vit14",
                      "dinov2"),
    "dinov2r_xr_vits14": ("dinov2_vits14_xr",
                          "vit-small/dinov2-architectures/neco_on_dinov2r_xr_vit14", "dinov2"),
    "dinov2r_vits14": ("dinov2_vits14_reg", "vit-small/dinov2-architectures/neco_on_dinov2r_vit14",
                       "dinov2_reg"),
    "dinov2_vitb14": ("dinov2_vitb14", "vit-base/dinov2-architectures/neco_on_dinov2_vit14",
                      "dinov2"),
    "dinov2r_xr_vitb14": ("dinov2_vitb14_xr",
                          "vit-base/dinov2-architectures/neco_on_dinov2r_xr_vit14", "dinov2"),
    "dinov2r_vitb14": ("dinov2_vitb14_reg", "vit-base/dinov2-architectures/neco_on_dinov2r_vit14",
                       "dinov2_reg"),
    "dino_vits16": ("dino_vits16", "vit-small/dino-architectures/neco_on_dino_vit16", "dino"),
    "timetuning_vits16": ("timetuning_vits16",
                          "vit-small/dino-architectures/neco_on_timetuning_vit16", "dino"),
    "leopart_vits16": ("leopart_vits16", "vit-small/dino-architectures/neco_on_leopart_vit16",
                       "dino"),
}  # fmt: skip


def place_in_hf_cache(
    cache: Path, filename: str, obj: Any, *, revision: str = "main", commit: str = COMMIT
) -> Path:
    """Write ``obj`` where ``hf_hub_download(FunAILab/NeCo, filename, revision)`` finds it."""
    repo = cache / "models--FunAILab--NeCo"
    path = repo / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    if revision != commit:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _configs(backbone: str, checkpoint: str, key: str, revision: str):
    train = load_training(ROOT / "params.yaml")[0]
    ev = load_section(ROOT / "params.yaml", "eval", EvalConfig)
    assert ev.release_revision == "main"  # the committed default
    return (
        replace(train, backbone=backbone, pos_embed_interp="official"),
        replace(ev, checkpoint=checkpoint, checkpoint_key=key, release_revision=revision),
    )


def test_release_table_matches_the_readme() -> None:
    assert set(R.RELEASES) == set(EXPECTED)
    for name, (backbone, stem, arch) in EXPECTED.items():
        rel = R.RELEASES[name]
        assert (rel.backbone, rel.stem) == (backbone, stem), name
        assert rel.filename("student") == f"{stem}_model.ckpt"
        assert rel.filename("teacher") == f"{stem}_teacher.ckpt"
        assert backbone in BACKBONES
        assert release_arch_of(BACKBONES[backbone].key_map) == arch, name
    assert R.release_name("neco_release:dino_vits16") == "dino_vits16"
    assert R.release_name("models/x.ckpt") is None and R.release_name(None) is None
    with pytest.raises(WeightsError, match=r"unknown NeCo release 'dinov3'.*dinov2r_xr_vits14"):
        R.get_release("dinov3")


@pytest.mark.parametrize(
    ("name", "backbone", "arch", "which", "registers"),
    [
        ("dinov2r_xr_vits14", "dinov2_vits14_xr", "dinov2", "student", "absent"),
        ("dinov2r_vits14", "dinov2_vits14_reg", "dinov2_reg", "teacher", "convert"),
        ("leopart_vits16", "leopart_vits16", "dino", "student", "absent"),
    ],
)
def test_release_loads_from_the_hf_cache_end_to_end(
    hf_cache, tmp_path, monkeypatch, name, backbone, arch, which, registers
) -> None:
    import huggingface_hub

    real = huggingface_hub.hf_hub_download

    def guarded(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("local_files_only"), "network download attempted"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", guarded)
    rel = R.RELEASES[name]
    obj, vit = neco_release_file(arch, which, seed=3)
    path = place_in_hf_cache(hf_cache, rel.filename(which), obj)
    train, ev = _configs(backbone, f"neco_release:{name}", which, "main")
    bb = load_for_eval("neco", train, ev, models_dir=tmp_path / "absent", init_dir=tmp_path)
    got = bb.vit.state_dict()
    want = to_timm(vit, registers=registers)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], v) for k, v in want.items())
    report = bb.load_report
    assert report["sha256"] == sha256_file(path)
    assert report["source"] == f"hf://FunAILab/NeCo/{rel.filename(which)}@main"
    assert (report["hf_repo"], report["hf_filename"], report["hf_revision"]) == (
        "FunAILab/NeCo", rel.filename(which), "main"
    )
    assert Path(report["file"]).resolve() == path.resolve()
    assert report["key_map"].startswith("neco_release[") and report["which"] == which


def test_release_pinned_to_a_commit_needs_no_ref(hf_cache, tmp_path) -> None:
    rel = R.RELEASES["dino_vits16"]
    obj, vit = neco_release_file("dino", "student", seed=4)
    place_in_hf_cache(hf_cache, rel.filename("student"), obj, revision=COMMIT)
    bb = load_eval_backbone(
        "neco", backbone="dino_vits16", models_dir=tmp_path, checkpoint="neco_release:dino_vits16",
        checkpoint_key="student", pos_embed_interp="official", release_revision=COMMIT,
    )  # fmt: skip
    key = "blocks.11.mlp.fc2.weight"
    assert torch.equal(bb.vit.state_dict()[key], vit[key])
    assert bb.load_report["hf_revision"] == COMMIT


def test_release_for_another_backbone_fails_naming_both(hf_cache, tmp_path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        load_eval_backbone(
            "neco", backbone="dinov2_vits14", models_dir=tmp_path,
            checkpoint="neco_release:dinov2r_xr_vits14", checkpoint_key="student",
            pos_embed_interp="official",
        )  # fmt: skip
    msg = str(info.value)
    assert "'dinov2_vits14_xr'" in msg and "train.backbone is 'dinov2_vits14'" in msg
    assert time.perf_counter() - t0 < 1.0  # before any file or model work


def test_offline_release_not_in_cache_fails_fast_with_instructions(hf_cache, tmp_path) -> None:
    rel = R.RELEASES["dinov2r_xr_vits14"]
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        load_eval_backbone(
            "neco", backbone="dinov2_vits14_xr", models_dir=tmp_path,
            checkpoint="neco_release:dinov2r_xr_vits14", checkpoint_key="teacher",
            pos_embed_interp="official", release_revision="main",
        )  # fmt: skip
    assert time.perf_counter() - t0 < 5.0
    msg = str(info.value)
    filename = "vit-small/dinov2-architectures/neco_on_dinov2r_xr_vit14_teacher.ckpt"
    assert rel.filename("teacher") == filename
    for part in ("FunAILab/NeCo", filename, "revision main", "eval.release_revision",
                 str(hf_cache / "models--FunAILab--NeCo"), "HF_HUB_OFFLINE",
                 "eval.checkpoint=<local path", f"resolve/main/{filename}"):  # fmt: skip
        assert part in msg, part
    assert "\n" not in msg


def test_unresolvable_hub_host_fails_fast_without_offline_flag(hf_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.nonexistent.invalid")
    import huggingface_hub

    real = huggingface_hub.hf_hub_download

    def guarded(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("local_files_only"), "download attempted although the host is down"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", guarded)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=r"hub\.nonexistent\.invalid does not resolve"):
        R.resolve_release_file(R.RELEASES["dino_vits16"], "student", revision="main")
    assert time.perf_counter() - t0 < 5.0


def test_cli_prints_the_offline_error_as_one_line(hf_cache, capsys) -> None:
    def main() -> None:
        R.resolve_release_file(R.RELEASES["leopart_vits16"], "teacher", revision="main")

    with pytest.raises(SystemExit) as info:
        run_stage(main)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: NeCo release file not available: HF repo FunAILab/NeCo")
    assert err.count("\n") == 1


def test_hf_cache_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert R.hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert R.hf_cache_dir() == tmp_path / "c"


def test_release_checkpoint_is_not_a_local_path(tmp_path) -> None:
    with pytest.raises(ValueError, match="NeCo release"):
        model_weights_path("neco", models_dir=tmp_path, checkpoint="neco_release:dino_vits16")
    with pytest.raises(WeightsError, match="checkpoint_key"):
        R.RELEASES["dino_vits16"].filename("ema")
