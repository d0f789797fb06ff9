"""Every metrics file records the evaluated weights and what produced them (evaluation.md §1.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neco.config import EvalConfig, TrainConfig, load_section
from neco.evals.models import model_provenance
from neco.models.recipes import load_training

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def sections() -> tuple[TrainConfig, EvalConfig]:
    params = ROOT / "params.yaml"
    return load_training(params)[0], load_section(params, "eval", EvalConfig)


def test_provenance_records_sha_variant_interp_and_training(
    tmp_path: Path, sections: tuple[TrainConfig, EvalConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, ev = sections
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models" / "neco"
    models.mkdir(parents=True)
    resolved = {"backbone": train.backbone, "fingerprint": "abc", "values": {"epochs": 10}}
    (models / "resolved_config.json").write_text(json.dumps(resolved))
    report = {"source": str(models / "student_backbone.safetensors"), "sha256": "f" * 64,
              "key_map": "timm", "file": "/home/someone/.cache/neco/x.pth"}
    got = model_provenance("neco", report, train=train, ev=ev, models_dir=models)
    assert got["backbone"] == train.backbone and got["pos_embed_interp"] == train.pos_embed_interp
    assert got["weights"]["sha256"] == "f" * 64 and got["weights"]["key_map"] == "timm"
    # no machine-dependent absolute paths: metrics files stay byte-identical across clones
    assert got["weights"]["source"] == "models/neco/student_backbone.safetensors"
    assert got["weights"]["file"] == "…/neco/x.pth"
    assert got["training"] == resolved and got["checkpoint"] is None
    init = model_provenance("init", report, train=train, ev=ev, models_dir=models)
    assert init["training"] is None
