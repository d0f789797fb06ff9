"""Weight sources, offline behaviour and strict key maps for every official format (D2)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from official_formats import dino_head, dino_vits16, dinov2_vits14

from neco.io import sha256_file
from neco.models import fetch as W
from neco.models.checkpoints import KEY_MAPS
from neco.models.fetch import resolve_weights_file
from neco.models.registry import (
    BACKBONES,
    SourceKind,
    WeightsError,
    WeightSource,
    local_source,
    url_source,
)
from neco.models.vit import build_backbone, load_neco_checkpoint

torch.set_num_threads(1)


def _build(name: str, weights, **kw):
    return build_backbone(
        name,
        weights=weights,
        cache_dir=kw.get("cache_dir"),
        drop_path_rate=0.0,
        pos_embed_interp="official",
        seed=0,
    )


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def v2_plain() -> dict[str, torch.Tensor]:
    return dinov2_vits14(registers=0, seed=10)


@pytest.fixture(scope="module")
def v2_reg() -> dict[str, torch.Tensor]:
    return dinov2_vits14(registers=4, seed=11)


@pytest.fixture(scope="module")
def v1() -> dict[str, torch.Tensor]:
    return dino_vits16(seed=12)


def _assert_loaded(bb, sd: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    got = bb.vit.state_dict()
    for k, v in sd.items():
        if k not in skip:
            assert torch.equal(got[k], v), k


# ---------------------------------------------------------------------------------- sources


def test_registry_sources_match_spec_urls() -> None:
    base = "https://dl.fbaipublicfiles.com/dinov2"
    assert BACKBONES["dinov2_vits14"].weights.urls == (
        f"{base}/dinov2_vits14/dinov2_vits14_pretrain.pth",
    )
    assert BACKBONES["dinov2_vitb14_reg"].weights.urls == (
        f"{base}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    )
    assert BACKBONES["dinov2_vits14_xr"].weights.urls == BACKBONES["dinov2_vits14_reg"].weights.urls
    assert BACKBONES["dino_vits16"].weights.urls == (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain_full_checkpoint.pth",
    )
    for name, spec in BACKBONES.items():
        assert spec.key_map in KEY_MAPS, name
        if spec.weights.kind is SourceKind.URL:
            assert spec.weights.urls and all(u.startswith("https://") for u in spec.weights.urls)
            assert spec.weights.filename and spec.weights.filename.endswith((".pth", ".ckpt"))
            assert spec.weights.sha256 is None  # no publisher gives one (checkpoints.md M5)
    # every pretrained backbone has a public URL now (checkpoints.md M5)
    kinds = {n: s.weights.kind for n, s in BACKBONES.items()}
    assert {n for n, k in kinds.items() if k is not SourceKind.URL} == {"vit_tiny_demo"}
    ibot = "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot"
    assert BACKBONES["ibot_vits16"].weights.urls == (f"{ibot}/vits_16/checkpoint_teacher.pth",)
    assert BACKBONES["ibot_vitb16"].weights.urls == (f"{ibot}/vitb_16/checkpoint_teacher.pth",)
    assert BACKBONES["cribo_vits16"].weights.urls == (
        "https://rdr.kuleuven.be/api/access/datafile/159665",
    )
    assert BACKBONES["cribo_vitb16"].weights.urls == (
        "https://rdr.kuleuven.be/api/access/datafile/159666",
    )
    assert BACKBONES["leopart_vits16"].weights.urls == (
        "https://www.dropbox.com/s/0kjy61jh4i3vbnh/leopart_vits16.ckpt?dl=1",
    )
    assert BACKBONES["timetuning_vits16"].weights.urls == (
        "https://www.dropbox.com/scl/fi/nnx2mm8ian9w49vstpgz0/TimeT.pth"
        "?rlkey=w9q3hvxd51nb63ammy33qhry0&dl=1",
    )
    assert BACKBONES["leopart_vits16"].weights.filename == "leopart_vits16.ckpt"
    assert BACKBONES["timetuning_vits16"].weights.filename == "TimeT.pth"
    files = [s.weights.filename for s in BACKBONES.values() if s.weights.filename]
    urls = {s.weights.urls for s in BACKBONES.values() if s.weights.filename}
    assert len(set(files)) == len(urls)  # distinct files never share a cache name


def test_offline_unresolvable_host_fails_fast_naming_url_and_override(tmp_path) -> None:
    src = url_source("https://weights.nonexistent.invalid/dinov2/x_pretrain.pth", note="test")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        resolve_weights_file("dinov2_vits14", src, cache_dir=tmp_path, progress=False)
    assert time.perf_counter() - t0 < 5.0
    msg = str(info.value)
    assert "https://weights.nonexistent.invalid/dinov2/x_pretrain.pth" in msg
    assert "train.weights" in msg and str(tmp_path / "x_pretrain.pth") in msg


def test_build_backbone_offline_fails_fast_end_to_end(tmp_path, monkeypatch) -> None:
    """The registry path of build_backbone(weights=None) with an unreachable host: < 5 s."""
    spec = BACKBONES["dinov2_vits14"]
    url = "https://dl.nonexistent.invalid/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    monkeypatch.setitem(
        BACKBONES, "dinov2_vits14", replace(spec, weights=url_source(url, note="t"))
    )
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=rf"(?s){re.escape(url)}.*train\.weights="):
        _build("dinov2_vits14", None, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 5.0


def test_download_helper_does_not_retry_name_resolution(tmp_path, monkeypatch) -> None:
    """Even past the DNS pre-check, neco.download.fetch.fetch must fail fast on a dead host."""
    pytest.importorskip("neco.download.fetch")
    monkeypatch.setattr(W, "host_resolves", lambda host, timeout_s: True)
    src = url_source("https://weights.nonexistent.invalid/x.pth", note="test")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match=r"(?s)nonexistent\.invalid/x\.pth.*train\.weights"):
        resolve_weights_file("dino_vits16", src, cache_dir=tmp_path, progress=False)
    assert time.perf_counter() - t0 < 5.0


def test_registry_url_download_failure_is_wrapped(tmp_path, monkeypatch) -> None:
    """build_backbone(weights=None) with a failing download names the URL and the override."""

    class FakeDownloadError(RuntimeError):
        pass

    def fake_fetch(urls, dest, **kw):
        assert kw["retries"] >= 0 and kw["timeout_s"] > 0 and "backoff_s" in kw
        raise FakeDownloadError("connection refused")

    fake = types.ModuleType("neco.download.fetch")
    fake.fetch, fake.DownloadError = fake_fetch, FakeDownloadError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "neco.download.fetch", fake)
    monkeypatch.setattr(W, "host_resolves", lambda host, timeout_s: True)
    with pytest.raises(WeightsError) as info:
        _build("dinov2_vits14", None, cache_dir=tmp_path)
    assert BACKBONES["dinov2_vits14"].weights.urls[0] in str(info.value)
    assert "train.weights" in str(info.value) and "connection refused" in str(info.value)


def test_cached_file_is_used_without_network(tmp_path, v2_plain, monkeypatch) -> None:
    monkeypatch.setattr(W, "host_resolves", lambda *a: pytest.fail("network touched"))
    _save(v2_plain, tmp_path / "dinov2_vits14_pretrain.pth")
    bb = _build("dinov2_vits14", None, cache_dir=tmp_path)
    _assert_loaded(bb, v2_plain, skip=("mask_token",))
    assert bb.load_report["sha256"] == sha256_file(tmp_path / "dinov2_vits14_pretrain.pth")
    bad = WeightSource(
        SourceKind.URL,
        ("https://x.invalid/dinov2_vits14_pretrain.pth",),
        "dinov2_vits14_pretrain.pth",
        "0" * 64,
        "test",
    )
    with pytest.raises(WeightsError, match="sha256 does not match"):
        resolve_weights_file("dinov2_vits14", bad, cache_dir=tmp_path, progress=False)


def test_missing_cache_dir_and_local_only_sources_say_what_to_set(monkeypatch) -> None:
    with pytest.raises(WeightsError, match=r"train\.weights_cache"):
        _build("dinov2_vits14", None)
    spec = BACKBONES["leopart_vits16"]
    local = local_source("Leopart ViT-S/16 checkpoint", note="test")
    monkeypatch.setitem(BACKBONES, "leopart_vits16", replace(spec, weights=local))
    with pytest.raises(WeightsError, match=r"no public weight URL.*train\.weights="):
        _build("leopart_vits16", None)


def test_random_init_report_says_no_file_was_read() -> None:
    report = _build("vit_tiny_demo", None).load_report
    assert report["source"] == "random" and report["sha256"] is None
    assert report["key_map"] is None and "no weight file" in report["note"]


def test_weights_stage_records_the_sha256_of_the_file_read(tmp_path, v1) -> None:
    """``models/init/weights.json`` gets the backbone's load report (stages/weights.py)."""
    import json

    from stages.weights import main

    path = _save(v1, tmp_path / "dino_deitsmall16_pretrain.pth")
    params = tmp_path / "params.yaml"
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    text = re.sub(r"(?m)^(  backbone:\s*)\S+", r"\g<1>dino_vits16", text, count=1)
    text = re.sub(r"(?m)^(  weights:\s*)\S+", rf"\g<1>{path}", text, count=1)
    params.write_text(text)
    main(["--params", str(params), "--out", str(tmp_path / "init")])
    report = json.loads((tmp_path / "init" / "weights.json").read_text())["load_report"]
    assert report["sha256"] == sha256_file(path) and report["source"] == str(path)
    assert report["key_map"] == "dino"


# -------------------------------------------------------------------------------- key maps


def test_dinov2_plain(tmp_path, v2_plain) -> None:
    bb = _build("dinov2_vits14", _save(v2_plain, tmp_path / "w.pth"))
    _assert_loaded(bb, v2_plain, skip=("mask_token",))
    assert bb.load_report["dropped"] == ["mask_token"]


def test_dinov2_reg_converts_to_timm_register_layout(tmp_path, v2_reg) -> None:
    bb = _build("dinov2_vits14_reg", _save(v2_reg, tmp_path / "w.pth"))
    sd = bb.vit.state_dict()
    assert torch.equal(sd["reg_token"], v2_reg["register_tokens"])
    assert torch.equal(sd["cls_token"], v2_reg["cls_token"] + v2_reg["pos_embed"][:, :1])
    assert torch.equal(sd["pos_embed"], v2_reg["pos_embed"][:, 1:])
    assert bb.num_prefix_tokens == 5


def test_xr_drops_exactly_register_tokens_and_logs(tmp_path, v2_reg, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="neco.models.checkpoints"):
        bb = _build("dinov2_vits14_xr", _save(v2_reg, tmp_path / "w.pth"))
    assert sorted(bb.load_report["dropped"]) == ["mask_token", "register_tokens"]
    assert any(
        "register_tokens" in r.getMessage() and "XR" in r.getMessage() for r in caplog.records
    )
    _assert_loaded(bb, v2_reg, skip=("mask_token", "register_tokens"))
    assert bb.num_prefix_tokens == 1


def test_register_mismatches_are_errors(tmp_path, v2_plain, v2_reg) -> None:
    with pytest.raises(WeightsError, match=r"(?s)unexpected keys \(1\): register_tokens.*_xr"):
        _build("dinov2_vits14", _save(v2_reg, tmp_path / "reg.pth"))
    with pytest.raises(WeightsError, match="no 'register_tokens'"):
        _build("dinov2_vits14_xr", _save(v2_plain, tmp_path / "plain.pth"))


def test_missing_unexpected_and_shape_errors_list_the_keys(tmp_path, v2_plain) -> None:
    sd = dict(v2_plain)
    del sd["blocks.3.mlp.fc2.bias"]
    sd["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError) as info:
        _build("dinov2_vits14", _save(sd, tmp_path / "w.pth"))
    msg = str(info.value)
    assert "missing keys (1): blocks.3.mlp.fc2.bias" in msg
    assert "unexpected keys (1): blocks.0.attn.extra" in msg
    sd = dict(v2_plain, **{"norm.weight": torch.ones(768)})
    with pytest.raises(WeightsError, match=r"norm\.weight: file \(768,\) vs model \(384,\)"):
        _build("dinov2_vits14", _save(sd, tmp_path / "w2.pth"))


def test_dino_full_checkpoint_teacher(tmp_path, v1) -> None:
    head = dino_head(dim=384, seed=1)
    teacher = {
        **{f"backbone.{k}": v for k, v in v1.items()},
        **{f"head.{k}": v for k, v in head.items()},
    }
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}
    ckpt = {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 8)},
    }
    bb = _build("dino_vits16", _save(ckpt, tmp_path / "full.pth"))
    _assert_loaded(bb, v1)
    assert sorted(bb.load_report["dropped"]) == sorted(f"head.{k}" for k in head)
    assert bb.load_report["container"] == "teacher"
    teacher["head.unknown.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): head\.unknown\.weight"):
        _build("dino_vits16", _save(ckpt, tmp_path / "full2.pth"))


def test_ibot_format(tmp_path, v1) -> None:
    sd = {**v1, "masked_embed": torch.zeros(384)}
    bb = _build("ibot_vits16", _save({"state_dict": sd}, tmp_path / "checkpoint_teacher.pth"))
    _assert_loaded(bb, v1)
    assert bb.load_report["dropped"] == ["masked_embed"]


def test_cribo_format(tmp_path, v1) -> None:
    teacher = {
        **{f"backbone.{k}": v for k, v in v1.items()},
        "head.mlp.0.weight": torch.zeros(2, 2),
    }
    bb = _build("cribo_vits16", _save({"teacher": teacher, "epoch": 3}, tmp_path / "cribo.pth"))
    _assert_loaded(bb, v1)


def test_leopart_and_timetuning_real_layouts(tmp_path, v1) -> None:
    """The real layouts (checkpoints.md M1, M2); every variant: tests/test_checkpoint_formats.py."""
    leo = {f"model.{k}": v for k, v in v1.items()}
    leo.update({"model.projection_head.0.weight": torch.zeros(4, 384),
                "model.prototypes.weight": torch.zeros(3, 4)})  # fmt: skip
    bb = _build("leopart_vits16", _save(leo, tmp_path / "leopart_vits16.ckpt"))
    _assert_loaded(bb, v1)
    assert bb.load_report["dropped"] == ["projection_head.0.weight", "prototypes.weight"]
    timet = {f"feature_extractor.backbone.{k}": v for k, v in v1.items()}
    timet.update({"feature_extractor.head.0.weight": torch.zeros(2), "prototypes": torch.zeros(2)})
    _assert_loaded(_build("timetuning_vits16", _save(timet, tmp_path / "TimeT.pth")), v1)
    # the old assumption (a flat ViT dict) is not the TimeT layout: it fails, naming the prefix
    with pytest.raises(WeightsError, match=r"feature_extractor\.backbone\."):
        _build("timetuning_vits16", _save(dict(v1), tmp_path / "flat.pth"))


def test_released_neco_lightning_checkpoint(tmp_path, v2_plain) -> None:
    teacher = {k: v + 1 for k, v in v2_plain.items()}
    sd = {
        **{f"model.{k}": v for k, v in v2_plain.items()},
        **{f"teacher.{k}": v for k, v in teacher.items()},
    }
    path = _save(
        {"state_dict": sd, "epoch": 24, "global_step": 46200, "hyper_parameters": {"lr": 1e-5}},
        tmp_path / "neco_on_dinov2r_xr_vit14_model.ckpt",
    )
    student = load_neco_checkpoint(
        path, "dinov2_vits14_xr", which="student", pos_embed_interp="official"
    )
    _assert_loaded(student, v2_plain, skip=("mask_token",))
    assert student.load_report["ignored_outside_prefix"] == len(teacher)
    assert student.load_report["outside_prefixes"] == ["teacher."]
    t = load_neco_checkpoint(path, "dinov2_vits14_xr", which="teacher", pos_embed_interp="official")
    _assert_loaded(t, teacher, skip=("mask_token",))
    sd["student.cls_token"] = sd.pop("model.cls_token")
    path = _save({"state_dict": sd}, tmp_path / "renamed.ckpt")
    with pytest.raises(WeightsError, match=r"outside the backbone prefix 'teacher\.' \(1\): "
                       r"student\.cls_token"):  # fmt: skip
        load_neco_checkpoint(path, "dinov2_vits14_xr", which="teacher", pos_embed_interp="official")
    with pytest.raises(ValueError, match="checkpoint_key"):
        load_neco_checkpoint(path, "dinov2_vits14_xr", which="ema", pos_embed_interp="official")


def test_weights_only_refuses_foreign_pickles(tmp_path) -> None:
    torch.save({"teacher": {}, "args": Path("/x")}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"weights_only=True"):
        _build("dino_vits16", tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="not found"):
        _build("dino_vits16", tmp_path / "absent.pth")
