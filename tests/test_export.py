"""Export to timm-named safetensors and strict re-import (identical features)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from neco.models.checkpoints import read_export_metadata
from neco.models.export import export_backbone, load_exported, main
from neco.models.registry import WeightsError
from neco.models.vit import build_backbone

torch.set_num_threads(1)


def _trained_demo(seed: int):
    bb = build_backbone(
        "vit_tiny_demo",
        weights="random",
        cache_dir=None,
        drop_path_rate=0.1,
        pos_embed_interp="official",
        seed=seed,
    )
    with torch.no_grad():  # move away from the seed-0 init so a silent re-init would be caught
        for p in bb.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return bb


def test_export_roundtrip_gives_identical_features(tmp_path) -> None:
    bb = _trained_demo(seed=7).eval()
    out = tmp_path / "student.safetensors"
    export_backbone(bb, out)
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]  # atomic, no temp left
    meta = read_export_metadata(out)
    assert meta["backbone"] == "vit_tiny_demo" and meta["pos_embed_interp"] == "official"
    back = load_exported(out, "vit_tiny_demo", pos_embed_interp="official")
    x = torch.randn(2, 3, 112, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(x), bb(x))
    assert back.load_report["key_map"] == "timm"


def test_export_is_timm_loadable(tmp_path) -> None:
    import safetensors.torch
    import timm

    bb = _trained_demo(seed=8).eval()
    out = tmp_path / "s.safetensors"
    export_backbone(bb, out)
    kwargs = json.loads(read_export_metadata(out)["timm_create_kwargs"])
    model = timm.create_model(**kwargs).eval()
    model.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():  # at the native size timm's own forward needs no resampling
        torch.testing.assert_close(model.forward_features(x)[:, 1:], bb(x), rtol=0, atol=1e-6)


def test_load_exported_is_strict(tmp_path) -> None:
    import safetensors.torch

    bb = _trained_demo(seed=9)
    out = tmp_path / "s.safetensors"
    export_backbone(bb, out)
    with pytest.raises(
        WeightsError, match="exported for backbone 'vit_tiny_demo', not 'dino_vits16'"
    ):
        load_exported(out, "dino_vits16", pos_embed_interp="official")
    sd = safetensors.torch.load_file(str(out))
    del sd["blocks.2.norm1.bias"]
    safetensors.torch.save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(WeightsError, match=r"missing keys \(1\): blocks\.2\.norm1\.bias"):
        load_exported(tmp_path / "cut.safetensors", "vit_tiny_demo", pos_embed_interp="official")


def test_cli_exports_student_from_lightning_checkpoint(tmp_path, capsys) -> None:
    student, teacher = _trained_demo(seed=10), _trained_demo(seed=11)
    sd = {
        **{f"student.backbone.{k}": v for k, v in student.state_dict().items()},
        **{f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()},
        "student.head.0.weight": torch.zeros(4, 192),
    }
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 18}, ckpt)
    out = tmp_path / "student.safetensors"
    assert (
        main(
            [
                "--ckpt",
                str(ckpt),
                "--backbone",
                "vit_tiny_demo",
                "--out",
                str(out),
                "--pos-embed-interp",
                "official",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["ignored_outside_prefix"] > 0
    back = load_exported(out, "vit_tiny_demo", pos_embed_interp="official")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), student.eval()(x))
    found = "prefixes are ['student.', 'student.backbone.vit.', 'teacher.backbone.vit.']"
    with pytest.raises(WeightsError, match=re.escape(found)):
        main(
            [
                "--ckpt",
                str(ckpt),
                "--backbone",
                "vit_tiny_demo",
                "--out",
                str(out),
                "--prefix",
                "model.",
            ]
        )
