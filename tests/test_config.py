"""The typed config loader: unknown keys, wrong types, missing values and enums (STYLE P3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neco.config import ConfigError, EvalConfig, load_section, load_value
from neco.models.recipes import load_training
from neco.show import validate_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_default_params_load() -> None:
    train = load_training(ROOT / "params.yaml")[0]
    assert train.backbone == "vit_tiny_demo"
    assert train.loss.sort_network.value == "bitonic"
    assert load_value(ROOT / "params.yaml", "seed", int) == 400
    ev = load_section(ROOT / "params.yaml", "eval", EvalConfig)
    assert ev.hbird.k == 30


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda p: p["train"]["loss"].update(n_ref=3))
    with pytest.raises(ConfigError, match=r"train\.loss\.n_ref"):
        load_training(path)[0]


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda p: p["train"].update(lr_heads="fast"))
    with pytest.raises(ConfigError, match=r"train\.lr_heads.*fast"):
        load_training(path)[0]


def test_missing_value_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda p: p["train"]["head"].pop("out_dim"))
    with pytest.raises(ConfigError, match=r"missing key 'train\.head\.out_dim'"):
        load_training(path)[0]


def test_bad_enum_value_lists_choices(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda p: p["train"]["loss"].update(sort_network="bubble"))
    with pytest.raises(ConfigError, match=r"train\.loss\.sort_network.*bubble.*bitonic.*odd_even"):
        load_training(path)[0]


def test_unknown_key_in_archive_block_is_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path, lambda p: p["datasets"]["voc"]["archives"]["voc2012"].update(sha256="x")
    )
    with pytest.raises(ConfigError, match=r"datasets\.voc\.archives\.voc2012\.sha256"):
        validate_params(path)


def test_unknown_section_and_unknown_dataset(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda p: p.update(trian={"x": 1}))
    with pytest.raises(ConfigError, match="trian"):
        validate_params(path)
    path = _write(tmp_path, lambda p: p["datasets"].update(cityscapes={}))
    with pytest.raises(ConfigError, match=r"datasets\.cityscapes"):
        validate_params(path)


def test_scalar_type_and_bad_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda p: p.update(seed="abc"))
    with pytest.raises(ConfigError, match=r"seed: expected int"):
        load_value(path, "seed", int)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: cannot parse YAML"):
        load_training(bad)[0]


def test_sources_must_have_blocks(tmp_path: Path) -> None:
    def edit(p):  # type: ignore[no-untyped-def]
        p["data"]["sources"] = ["synthetic", "voc"]
        del p["datasets"]["voc"]

    with pytest.raises(ConfigError, match=r"data\.sources.*voc"):
        validate_params(_write(tmp_path, edit))


def test_sections_are_frozen() -> None:
    train = load_training(ROOT / "params.yaml")[0]
    with pytest.raises(AttributeError):
        train.backbone = "x"  # type: ignore[misc]


def test_unknown_top_level_key_fails_every_load(tmp_path: Path) -> None:
    """A misspelt section used to be ignored by every stage (only validate_params saw it)."""
    from neco.config import read_params

    path = _write(tmp_path, lambda p: p.update(trainn={"epochs": 1}))
    loads = [lambda: read_params(path), lambda: load_value(path, "seed", int),
             lambda: load_training(path)[0]]
    for load in loads:
        with pytest.raises(ConfigError, match=r"params\.yaml: unknown top-level key\(s\) "
                                              r"\['trainn'\]; expected only \['crops', 'data', "
                                              r"'datasets', 'eval', 'preset', 'pretrain', "
                                              r"'report', 'runtime', 'seed', 'train'\]"):
            load()


def test_known_top_level_keys_are_one_constant(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A future top-level key is added in one place."""
    from neco.config import loader

    path = _write(tmp_path, lambda p: p.update(sweep="a"))
    with pytest.raises(ConfigError, match=r"\['sweep'\]"):
        load_value(path, "seed", int)
    monkeypatch.setattr(loader, "EXTRA_TOP_LEVEL_KEYS", (*loader.EXTRA_TOP_LEVEL_KEYS, "sweep"))
    assert load_value(path, "seed", int) == 400
    assert "sweep" in loader.top_level_keys() and "preset" in loader.top_level_keys()


def test_reading_params_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from neco.config import load_value, read_params; "
            "read_params('params.yaml'); load_value('params.yaml', 'seed', int); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
