"""The paper's baselines (issue 10, deliverable 4): the right model beside each paper row.

For ``dinov2_vit{s,b}14_xr`` the paper's "DINOv2R" rows are the hub register model (method.md
§13), so the ``weights`` stage also writes that model (same file, registers kept) as the
``baseline`` eval model, every protocol evaluates it, and the report pairs it, not the XR
``init``, with the paper's baseline rows. Tiny DINOv2-format models stand in for ViT-S/14 under
the real registry names (``tiny_specs``), so the whole chain runs on CPU in seconds.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from official_formats import official_vit_state_dict
from safetensors.torch import load_file

import neco.report.paper as paper_module
from neco.config import ConfigError, RuntimeConfig, load_section
from neco.evals.models import eval_models, load_eval_backbone
from neco.io import sha256_file
from neco.models.checkpoints import read_export_metadata
from neco.models.recipes import resolve_eval
from neco.models.registry import BACKBONES, WeightsError
from neco.models.vit import build_backbone
from neco.report.collect import collect, rollup
from neco.report.document import render_tables
from neco.report.paper import (
    UNPAIRED_LABELS,
    load_paper_results,
    pairing_table,
    paper_pairings,
    unpaired_labels,
)

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
PAPER_CSV = ROOT / "data" / "paper" / "paper_results.csv"
XR, REG = "dinov2_vits14_xr", "dinov2_vits14_reg"
TINY = (("embed_dim", 64), ("depth", 2), ("num_heads", 2))


@pytest.fixture()
def tiny_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dinov2_vits14_{xr,reg}`` as 2-block, 64-d ViT/14s with a 4x4 native grid."""
    for name in (XR, REG):
        spec = BACKBONES[name]
        monkeypatch.setitem(BACKBONES, name, replace(
            spec, timm_kwargs=TINY, embed_dim=64, depth=2, num_heads=2, native_img_size=56))


@pytest.fixture(scope="module")
def reg4_state() -> dict[str, torch.Tensor]:
    """A tiny ``dinov2_vits14_reg4_pretrain.pth`` (official DINOv2 names, 4 registers)."""
    return official_vit_state_dict(dim=64, depth=2, patch=14, grid=4, registers=4,
                                   layerscale=True, mask_token=True, seed=7)


def _params(tmp: Path, **train: Any) -> tuple[Path, dict[str, Any]]:
    """``params.yaml`` with ``train`` keys overridden and a small, fast evaluation."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(train)
    params["runtime"]["progress"] = False
    params["runtime"]["num_workers"] = 0
    ev = params["eval"]
    ev["linear"].update(epochs=1, batch_size=4)
    ev["overcluster"].update(seeds=[0], ks=[14], nredo=1, niter=5)
    ev["hbird"].update(fractions=["1/1"], augmentation_epochs=1)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path, params


def _run_weights(tmp: Path, **train: Any) -> tuple[Path, dict[str, Any]]:
    from stages.weights import main

    params, _ = _params(tmp, **train)
    out = tmp / "init"
    main(["--params", str(params), "--out", str(out)])
    return out, json.loads((out / "weights.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------ weights stage


def test_weights_stage_writes_the_register_baseline_beside_the_xr_init(
    tmp_path: Path, tiny_specs: None, reg4_state: dict[str, torch.Tensor]
) -> None:
    source = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(reg4_state, source)
    out, record = _run_weights(tmp_path, backbone=XR, weights=str(source))

    init, base = load_file(out / "init_backbone.safetensors"), load_file(
        out / "baseline_backbone.safetensors")
    # the XR init: registers dropped, everything else the source tensors
    assert "reg_token" not in init
    assert sorted(record["load_report"]["dropped"]) == ["mask_token", "register_tokens"]
    # the baseline: the same file with its registers (timm reg layout: cls absorbs pos[0])
    assert torch.equal(base["reg_token"], reg4_state["register_tokens"])
    assert torch.equal(base["cls_token"], reg4_state["cls_token"] + reg4_state["pos_embed"][:, :1])
    assert torch.equal(base["pos_embed"], reg4_state["pos_embed"][:, 1:])
    shared = set(reg4_state) - {"mask_token", "register_tokens", "cls_token", "pos_embed"}
    assert shared and shared <= set(base) and shared <= set(init)
    for key in shared:
        assert torch.equal(base[key], reg4_state[key]), key
        assert torch.equal(init[key], reg4_state[key]), key
    assert read_export_metadata(out / "baseline_backbone.safetensors")["backbone"] == REG

    rec = record["baseline"]
    assert rec["backbone"] == REG and rec["file"] == "baseline_backbone.safetensors"
    assert rec["source"] == str(source) and rec["load_report"]["key_map"] == "dinov2_reg"
    assert rec["load_report"]["sha256"] == sha256_file(source)
    assert rec["load_report"]["dropped"] == ["mask_token"]


def test_weights_stage_without_a_baseline_is_unchanged(tmp_path: Path) -> None:
    """The demo backbone: the same two files and record keys as before."""
    out, record = _run_weights(tmp_path, backbone="vit_tiny_demo", weights=None)
    assert sorted(p.name for p in out.iterdir()) == ["init_backbone.safetensors", "weights.json"]
    assert set(record) == {"backbone", "source", "load_report"}


def test_an_exported_xr_file_cannot_make_the_baseline_and_says_so(tmp_path: Path) -> None:
    from neco.models.init_weights import WeightsParams, baseline_weights_source

    params = WeightsParams(backbone=XR, weights="x.safetensors", weights_cache=None)
    with pytest.raises(WeightsError, match=r"dinov2_vits14_reg.*register tokens.*official"):
        baseline_weights_source(params, "x.safetensors")
    assert baseline_weights_source(replace(params, backbone="vit_tiny_demo"), "random") is None


# ----------------------------------------------------------------------- eval models


def test_eval_models_add_the_baseline_and_never_skip_it() -> None:
    assert eval_models(["init", "neco"], XR) == ["init", "neco", "baseline"]
    assert eval_models(["neco"], "dinov2_vitb14_xr") == ["neco", "baseline"]
    assert eval_models(["baseline", "neco"], XR) == ["baseline", "neco"]
    assert eval_models(["init", "neco"], "vit_tiny_demo") == ["init", "neco"]
    assert eval_models(["init", "neco"], REG) == ["init", "neco"]  # its init is the baseline
    with pytest.raises(ConfigError, match="no paper baseline"):
        eval_models(["init", "baseline"], "vit_tiny_demo")
    with pytest.raises(ConfigError, match="unknown model 'teacher'"):
        eval_models(["init", "teacher"], XR)
    with pytest.raises(ConfigError, match="twice"):
        eval_models(["init", "init"], XR)


def test_baseline_extractor_drops_the_register_tokens(
    tmp_path: Path, tiny_specs: None, reg4_state: dict[str, torch.Tensor]
) -> None:
    torch.save(reg4_state, tmp_path / "w.pth")
    out, _ = _run_weights(tmp_path, backbone=XR, weights=str(tmp_path / "w.pth"))
    bb = load_eval_backbone("baseline", backbone=XR, models_dir=tmp_path / "neco",
                            checkpoint=None, checkpoint_key="student",
                            pos_embed_interp="official", init_dir=out)
    assert bb.spec.name == REG and bb.num_prefix_tokens == 5
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    tokens = bb(x)
    assert tokens.shape == (2, 4 * 6, 64)
    assert torch.equal(tokens, bb.forward_tokens(x)[:, 5:])
    with pytest.raises(ConfigError, match="has none"):
        load_eval_backbone("baseline", backbone="vit_tiny_demo", models_dir=tmp_path,
                           checkpoint=None, checkpoint_key="student",
                           pos_embed_interp="official", init_dir=out)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared ``synthetic`` tree: 6 train and 4 val images of 56-70 px."""
    from neco.data.sources.synthetic import SyntheticSourceConfig, prepare_synthetic
    from neco.data.sources.synthetic_images import SyntheticConfig, generate

    base = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    gen = {**base["datasets"]["synthetic"]["generator"], "num_train": 6, "num_val": 4,
           "sizes": [56, 70]}
    root = tmp_path_factory.mktemp("baselines")
    generate(SyntheticConfig(**gen), root / "raw", progress=False)
    cfg = SyntheticSourceConfig(generator=SyntheticConfig(**gen))
    prepare_synthetic(cfg, root / "raw", root / "prepared", progress=False)
    return root / "prepared"


@pytest.mark.filterwarnings("ignore:cluster_eval:UserWarning")
def test_every_protocol_evaluates_the_baseline_with_provenance(
    tmp_path: Path, tiny_specs: None, reg4_state: dict[str, torch.Tensor], prepared: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """weights -> features -> eval (3 protocols) -> report for an XR-like backbone."""
    from neco.evals.features import cache_features
    from neco.evals.run import evaluate
    from neco.models.export import export_backbone

    monkeypatch.chdir(tmp_path)
    torch.save(reg4_state, tmp_path / "w.pth")
    init_dir, _ = _run_weights(tmp_path, backbone=XR, weights=str(tmp_path / "w.pth"))
    models_dir = tmp_path / "neco"  # a "trained" student: the XR init, randomly re-seeded
    student = build_backbone(XR, weights="random", cache_dir=None, drop_path_rate=0.0,
                             pos_embed_interp="official", seed=3)
    export_backbone(student, models_dir / "student_backbone.safetensors")
    params, raw = _params(tmp_path, backbone=XR, weights=str(tmp_path / "w.pth"))
    # the eval code reads train.backbone and train.pos_embed_interp only (the training
    # sections are resolved by neco.models.recipes; not under test here)
    train: Any = SimpleNamespace(backbone=XR, pos_embed_interp="official")
    ev = resolve_eval(raw, XR)
    runtime = load_section(params, "runtime", RuntimeConfig)
    features = tmp_path / "features"
    cache_features("synthetic", train=train, ev=ev, data_root=prepared, init_dir=init_dir,
                   models_dir=models_dir, out_dir=features, runtime=runtime)
    assert sorted(p.name for p in features.iterdir()) == ["baseline.pt", "init.pt", "neco.pt"]

    entries = []
    for protocol in ("overcluster", "linear", "hbird"):
        out = tmp_path / "metrics" / protocol / "synthetic.json"
        payload = evaluate(protocol, "synthetic", seed=0, train=train, ev=ev, data_root=prepared,
                           init_dir=init_dir, models_dir=models_dir, features_dir=features,
                           out=out, figure=tmp_path / f"{protocol}.png", runtime=runtime)
        assert list(payload["models"]) == ["init", "neco", "baseline"]
        prov = payload["models"]["baseline"]["provenance"]
        assert prov["backbone"] == REG and prov["baseline_of"] == XR
        assert prov["weights"]["sha256"] == sha256_file(
            init_dir / "baseline_backbone.safetensors")
        assert prov["weights"]["key_map"] == "timm" and prov["training"] is None
        init_prov = payload["models"]["init"]["provenance"]
        assert init_prov["backbone"] == XR and "baseline_of" not in init_prov
        entries.append(collect(json.loads(out.read_text()), source=str(out)))

    leaves = rollup(entries, {"final_loss": 1.0}, train_source="summary.json")
    assert "linear.synthetic.baseline.miou" in leaves
    assert leaves["linear.synthetic.delta_baseline"] == pytest.approx(
        leaves["linear.synthetic.neco.miou"] - leaves["linear.synthetic.baseline.miou"], abs=0.02)


# ------------------------------------------------------------------------------ report


def _linear(miou: float) -> dict[str, Any]:
    return {"miou": miou, "fingerprint": "linear[S448]", "settings": {}}


def _render(models: dict[str, float], backbone: str) -> str:
    from neco.config.sections import ReportConfig

    e = collect({"protocol": "linear", "dataset": "voc", "backbone": backbone,
                 "models": {m: _linear(v) for m, v in models.items()}}, source="voc.json")
    cfg = ReportConfig(paper_settings_linear=[], paper_settings_overcluster=[],
                       paper_settings_hbird=[])
    return render_tables([e], train_summary={"final_loss": 1.0}, resolved_config={},
                         paper_rows=load_paper_results(PAPER_CSV), cfg=cfg,
                         loss_figure="loss.png", figures=[])


def test_report_pairs_the_paper_dinov2r_row_with_our_baseline() -> None:
    md = _render({"init": 0.7412, "neco": 0.80049, "baseline": 0.7301}, XR)
    assert ("| model | VOC |\n|:---|---:|\n"
            "| baseline `dinov2_vits14_reg` (ours) | 73.0 [1] |\n"
            "| baseline `dinov2_vits14_reg`, paper: DINOv2R ViT-S/14 | 74.2 (T2) |\n"
            "| init (XR: registers dropped) (ours) | 74.1 [1] |\n"
            "| NeCo (ours) | 80.0 [1] |\n"
            "| NeCo, paper: NeCo ViT-S/14 | 81.3 (T2) |\n"
            "| Δ NeCo − baseline `dinov2_vits14_reg` (ours) | +7.0 |\n"
            "| Δ, paper | +7.1 |\n"
            "| Δ NeCo − init (XR: registers dropped) (ours) | +5.9 |\n") in md
    assert "paper rows: baseline = DINOv2R ViT-S/14 beside our `baseline`" in md
    # without our baseline measurement the paper's DINOv2R row is not set beside the XR init
    md = _render({"init": 0.7412, "neco": 0.80049}, XR)
    assert "DINOv2R" not in md.split("| model | VOC |")[1]
    assert "| Δ NeCo − init (XR: registers dropped) (ours) | +5.9 |\n" in md


def test_report_of_a_backbone_whose_init_is_the_baseline_is_unchanged() -> None:
    md = _render({"init": 0.7412, "neco": 0.80049}, REG)
    assert ("| init (ours) | 74.1 [1] |\n"
            "| init, paper: DINOv2R ViT-S/14 | 74.2 (T2) |\n"
            "| NeCo (ours) | 80.0 [1] |\n"
            "| NeCo, paper: NeCo on DINOv2R ViT-S/14 | 81.5 (README) |\n"
            "| Δ NeCo − init (ours) | +5.9 |\n"
            "| Δ, paper | +7.3 |\n") in md
    assert "Backbone `dinov2_vits14_reg`; paper rows: init = DINOv2R ViT-S/14, NeCo = NeCo on " \
           "DINOv2R ViT-S/14." in md


# ------------------------------------------------------------------------ pairing table


def test_every_paper_baseline_row_is_one_model_of_ours() -> None:
    """Each init/baseline-paired CSV label exists and is exactly one (architecture, file)."""
    rows = load_paper_results(PAPER_CSV)
    models: dict[str, set[tuple[str, str | None]]] = {}
    for p in paper_pairings(rows):
        if p.model in ("init", "baseline") and p.label is not None:
            weights = BACKBONES[p.backbone].weights.filename
            models.setdefault(p.label, set()).add((p.row_model, weights))
            assert p.tags, f"{p.label} ({p.backbone} {p.model}): no usable row in the CSV"
    assert models["DINOv2R ViT-S/14"] == {(REG, "dinov2_vits14_reg4_pretrain.pth")}
    assert models["DINOv2R ViT-B/14"] == {("dinov2_vitb14_reg",
                                           "dinov2_vitb14_reg4_pretrain.pth")}
    for label, found in models.items():
        assert len(found) == 1, (label, found)
    # no XR init is ever paired with a paper row; each XR baseline is its _reg backbone
    for p in paper_pairings(rows):
        if p.backbone.endswith("_xr"):
            assert (p.model == "init") == (p.label is None)
            if p.model == "baseline":
                assert p.row_model == p.backbone.replace("_xr", "_reg") and p.registers == 4
    # every NeCo label is one backbone's
    neco: dict[str, set[str]] = {}
    for p in paper_pairings(rows):
        if p.model == "neco" and p.label is not None:
            neco.setdefault(p.label, set()).add(p.backbone)
    assert all(len(b) == 1 for b in neco.values()), neco


def test_unpaired_labels_are_exactly_the_recorded_ones() -> None:
    rows = load_paper_results(PAPER_CSV)
    assert set(unpaired_labels(rows)) == set(UNPAIRED_LABELS)


def test_docstring_pairing_table_matches_the_registry_and_csv() -> None:
    table = pairing_table(load_paper_results(PAPER_CSV))
    assert table in (paper_module.__doc__ or ""), (
        "neco/report/paper.py's docstring table is stale; paste pairing_table(rows):\n" + table)


def test_eval_models_change_nothing_for_the_demo_params() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    models = copy.deepcopy(params["eval"]["models"])
    assert eval_models(models, params["train"]["backbone"]) == models
