"""The demo's reading of its numbers (``neco.report.demo``) and the pretrain -> weights hand-over.

The study's seed spread and random-init reference are printed only for the configuration the
study measured and only while our init reproduces the study's init; a pretrained init file is
taken only when its record matches the params and its digest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neco.models.init_weights import (
    PRETRAIN_FILE,
    PRETRAIN_RECORD,
    WeightsParams,
    pretrain_skip_reason,
    pretrained_source,
)
from neco.report.collect import EvalEntry
from neco.report.demo import demo_section, matching_setting

PRETRAIN_CFG = {"steps": 400, "objective": "masked_hog", "lr": 0.001}
RECORD = {"backbone": "vit_tiny_demo", "pretrained": True, "objective": "masked_hog",
          "steps": 400, "num_images": 2000, "generator_seed": 1, "config": PRETRAIN_CFG}
RESOLVED = {"values": {"lr_backbone": 3e-5, "epochs": 5, "batch_size": 16},
            "params_keys": {"lr_backbone": "train.lr_backbone", "epochs": "train.epochs",
                            "batch_size": "train.batch_size"}}
STEPS = 30  # 96 images // 16 x 5 epochs


def _metrics(init: dict[str, float], neco: dict[str, float]) -> list[EvalEntry]:
    """Eval entries as the eval stages write them (fractions; K = C is the Hungarian run)."""
    def cluster(s: dict[str, float]) -> dict[str, Any]:
        runs = [{"k_used": k, "mean": s[f"k{k}"] / 100,
                 "matching": "hungarian" if k == 7 else "many_to_one_precision"}
                for k in (7, 14, 28)]
        return {"miou": s["k7"] / 100, "results": runs}

    models = {"init": init, "neco": neco}
    return [
        EvalEntry("hbird", "synthetic", "vit_tiny_demo",
                  {m: {"miou": s["hbird"] / 100} for m, s in models.items()}, "hbird.json"),
        EvalEntry("linear", "synthetic", "vit_tiny_demo",
                  {m: {"miou": s["linear"] / 100} for m, s in models.items()}, "linear.json"),
        EvalEntry("overcluster", "synthetic", "vit_tiny_demo",
                  {m: cluster(s) for m, s in models.items()}, "overcluster.json"),
    ]


INIT = {"hbird": 24.7, "linear": 26.0, "k7": 18.6, "k14": 20.0, "k28": 21.1}
NECO = {"hbird": 24.3, "linear": 26.2, "k7": 18.1, "k14": 20.5, "k28": 21.6}


def _study(init_shift: float = 0.0, lr: float = 3e-5) -> dict[str, Any]:
    def stat(init: float, gap: float, std: float) -> dict[str, float]:
        return {"init": init + init_shift, "gap": gap, "std": std, "mean": init + gap}

    return {
        "inits": {"ssl": {"config": {"backbone": "vit_tiny_demo", **PRETRAIN_CFG}},
                  "random": {"config": None}},
        "neco_base": {"train.epochs": 5},
        "settings": [
            {"name": "random_A", "init": "random", "train_images": 96, "neco": {},
             "init_scores": {"hbird": 14.4, "cluster_k7": 7.4, "overcluster_mean": 15.3,
                             "linear": 15.2}},
            {"name": "ssl_A", "init": "ssl", "train_images": 96, "note": "the demo",
             "neco": {"train.lr_backbone": lr}},
            {"name": "ssl_1k", "init": "ssl", "train_images": 1000, "neco": {}},
            {"name": "ssl_dense", "init": "ssl", "train_images": 96, "neco": {},
             "train_generator": {"objects_max": 5}},
        ],
        "summary": {"ssl_A": {"n": 3, "hbird": stat(24.7, -0.3, 0.3),
                              "cluster_k7": stat(18.6, -0.4, 0.5),
                              "overcluster_mean": stat(20.55, 1.2, 0.4),
                              "linear": stat(26.0, 0.1, 0.9)}},
    }


def test_matching_setting_needs_the_same_init_overrides_and_split() -> None:
    study = _study()
    study["settings"] = [study["settings"][3], *study["settings"][:3]]  # ssl_dense first
    found = matching_setting(study, PRETRAIN_CFG, RESOLVED, STEPS)  # another image distribution
    assert found is not None and found["name"] == "ssl_A"
    found = matching_setting(_study(), PRETRAIN_CFG, RESOLVED, STEPS)
    assert found is not None and found["name"] == "ssl_A"
    assert matching_setting(_study(lr=1e-4), PRETRAIN_CFG, RESOLVED, STEPS) is None
    assert matching_setting(_study(), {**PRETRAIN_CFG, "steps": 200}, RESOLVED, STEPS) is None
    # 1,000 images // 16 x 5 epochs = 310 steps: only the 1k setting would match that run
    other = matching_setting(_study(), PRETRAIN_CFG, RESOLVED, 310)
    assert other is not None and other["name"] == "ssl_1k"
    assert matching_setting(_study(), PRETRAIN_CFG, RESOLVED, 31) is None


def test_demo_section_prints_the_spread_of_the_matching_setting() -> None:
    text = "\n".join(demo_section(_metrics(INIT, NECO), dataset="synthetic", pretrain=RECORD,
                                  study=_study(), resolved=RESOLVED, steps=STEPS))
    hb = next(line for line in text.splitlines() if line.startswith("| Hummingbird 1/1"))
    cells = [c.strip() for c in hb.strip("|").split("|")]
    assert cells == ["Hummingbird 1/1", "14.4", "24.7", "+10.3", "24.3", "-0.4", "-0.3 ± 0.3",
                     "no"]
    over = next(line for line in text.splitlines() if line.startswith("| overclustering mean"))
    assert over.rstrip().endswith("| +1.2 ± 0.4 | yes |")  # 1.2 > 2 x 0.4
    assert "`ssl_A`" in text and "3 NeCo seeds" in text
    # every Δ of ours is inside the study mean ± 2 std (overclustering +0.5 vs +1.2 ± 2 x 0.4)
    assert "lies outside" not in text
    far = {**NECO, "k14": 24.0, "k28": 25.0}  # overclustering Δ +4.0
    text = "\n".join(demo_section(_metrics(INIT, far), dataset="synthetic", pretrain=RECORD,
                                  study=_study(), resolved=RESOLVED, steps=STEPS))
    assert "lies outside the study's mean ± 2 std on: overclustering mean;" in text


def test_demo_section_hides_a_study_whose_init_we_no_longer_reproduce() -> None:
    text = "\n".join(demo_section(_metrics(INIT, NECO), dataset="synthetic", pretrain=RECORD,
                                  study=_study(init_shift=0.8), resolved=RESOLVED,
                                  steps=STEPS))
    assert "-0.3 ± 0.3" not in text and "differ from ours by more than 0.5 points" in text
    assert "| 14.4 |" not in text  # no random reference either


def test_demo_section_without_a_matching_study_says_so() -> None:
    lines = demo_section(_metrics(INIT, NECO), dataset="synthetic", pretrain=RECORD,
                         study=_study(lr=1e-4), resolved=RESOLVED, steps=STEPS)
    assert any("did not measure this configuration" in line for line in lines)
    assert not any("-0.3 ± 0.3" in line for line in lines)
    assert demo_section(_metrics(INIT, NECO), dataset="synthetic",
                        pretrain={**RECORD, "pretrained": False}, study=_study(),
                        resolved=RESOLVED, steps=STEPS) == []
    assert demo_section(_metrics(INIT, NECO)[:2], dataset="synthetic", pretrain=RECORD,
                        study=_study(), resolved=RESOLVED, steps=STEPS) == []  # no clustering


def test_pretrain_curve_reader(tmp_path: Path) -> None:
    from neco.report.build import read_pretrain_curve
    from neco.report.collect import ReportInputError

    path = tmp_path / "loss.tsv"
    path.write_text("step\tloss\tmean_floor\n0\t3.0\t4.0\n1\t2.0\t4.0\n")
    curves = read_pretrain_curve(path)
    assert [list(v[1]) for v in curves.values()] == [[3.0, 2.0], [4.0, 4.0]]
    path.write_text("step\tloss\tmean_floor\n")
    assert read_pretrain_curve(path) == {}  # the stage did not pretrain
    path.write_text("step\tvalue\n0\t1\n")
    with pytest.raises(ReportInputError, match="expected a TSV with columns step, loss"):
        read_pretrain_curve(path)


def test_pretrain_runs_only_for_backbones_without_published_weights() -> None:
    demo = WeightsParams("vit_tiny_demo", None, None)
    assert pretrain_skip_reason(demo, 400) is None
    assert "steps=0" in str(pretrain_skip_reason(demo, 0))
    assert "published weights" in str(
        pretrain_skip_reason(WeightsParams("dinov2_vits14", None, None), 400))
    assert "train.weights" in str(
        pretrain_skip_reason(WeightsParams("vit_tiny_demo", "my.safetensors", None), 400))


def test_pretrained_source_refuses_stale_or_foreign_files(tmp_path: Path) -> None:
    from neco.io import sha256_file

    demo = WeightsParams("vit_tiny_demo", None, None)
    (tmp_path / PRETRAIN_FILE).write_bytes(b"weights")
    record = {"backbone": "vit_tiny_demo", "pretrained": True,
              "sha256": sha256_file(tmp_path / PRETRAIN_FILE)}
    (tmp_path / PRETRAIN_RECORD).write_text(json.dumps(record))
    assert pretrained_source(tmp_path, demo, 400) == str(tmp_path / PRETRAIN_FILE)
    with pytest.raises(ValueError, match="expects pretrained=False"):
        pretrained_source(tmp_path, demo, 0)  # pretrain.steps changed, record not rerun
    (tmp_path / PRETRAIN_FILE).write_bytes(b"other weights")
    with pytest.raises(ValueError, match="sha256"):
        pretrained_source(tmp_path, demo, 400)
    (tmp_path / PRETRAIN_RECORD).write_text(json.dumps({**record, "backbone": "dinov2_vits14"}))
    with pytest.raises(ValueError, match="written for backbone 'dinov2_vits14'"):
        pretrained_source(tmp_path, demo, 400)
    (tmp_path / PRETRAIN_RECORD).unlink()
    with pytest.raises(FileNotFoundError, match="dvc repro pretrain"):
        pretrained_source(tmp_path, demo, 400)
