"""Per-backbone recipes (method.md §12), their resolution against params and presets."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from neco.config.loader import ConfigError, read_params
from neco.config.presets import compose_params, preset_values
from neco.models.recipes import load_training, paper_recipe, resolve_training
from neco.models.registry import BACKBONES, PAPER_FIXED, RECIPE_PARAMS, Recipe, get_spec

ROOT = Path(__file__).resolve().parents[1]
COCO_TRAIN = 118_287

# method.md §12 table: (global px, local px, B, epochs, total steps on COCO, lr_backbone, queue)
TABLE = {
    "dinov2_vits14": (518, 98, 64, 25, 46_200, 1e-5, True),
    "dinov2_vits14_reg": (518, 98, 64, 25, 46_200, 1e-5, True),
    "dinov2_vits14_xr": (518, 98, 64, 25, 46_200, 1e-5, True),
    "dinov2_vitb14": (518, 98, 16, 25, 184_800, 5e-6, True),
    "dinov2_vitb14_reg": (518, 98, 16, 25, 184_800, 1e-6, True),
    "dinov2_vitb14_xr": (518, 98, 16, 25, 184_800, 1e-6, True),
    "dino_vits16": (224, 98, 45, 50, 131_400, 1e-5, False),
    "timetuning_vits16": (224, 98, 45, 50, 131_400, 1e-5, False),
    "leopart_vits16": (224, 98, 45, 50, 131_400, 1e-5, False),
}
# §12 "Settings common to every released config", as params keys
COMMON = {
    "crops.num_global": 2, "crops.num_local": 4, "crops.local_size": 98,
    "train.loss.roi_k": 7, "train.head.n_layers": 3, "train.head.hidden_dim": 2048,
    "train.head.out_dim": 256, "train.momentum_start": 0.9995, "train.momentum_end": 1.0,
    "train.lr_heads": 1e-4, "train.final_lr": 0.0, "train.weight_decay": 0.04,
    "train.weight_decay_end": 0.5, "train.loss.steepness_student": 100.0,
    "train.loss.steepness_teacher": 100.0, "train.loss.sort_network": "bitonic",
    "train.loss.sort_distribution": "cauchy", "train.loss.similarity": "cosine",
    "train.loss.crops_for_assign": [0, 1], "train.loss.use_teacher": True,
    "train.drop_path": 0.1, "train.precision": "32", "data.train": "coco",
    "train.loss.n_refs": 49, "train.loss.queue_push_per_image": 10,
    "train.teacher_head_init": "independent",
}  # fmt: skip
# The demo recipe (vit_tiny_demo; issue 14 changed lr_backbone, epochs, momentum_start and
# teacher_head_init for a 30-step run from the pretrained init).
DEMO = {
    "crops.global_size": 112, "crops.local_size": 48, "train.batch_size": 16,
    "train.lr_backbone": 3e-5, "train.epochs": 5, "train.loss.queue": True,
    "train.loss.queue_length": 2048, "train.loss.queue_push_per_image": 10,
    "train.head.hidden_dim": 256, "train.head.out_dim": 64, "train.head.n_layers": 3,
    "train.loss.roi_k": 4, "train.loss.n_refs": 16, "train.lr_heads": 1e-4,
    "train.weight_decay": 0.04, "train.weight_decay_end": 0.5, "train.momentum_start": 0.99,
    "train.momentum_end": 1.0, "train.drop_path": 0.1, "train.precision": "32",
    "crops.num_global": 2, "crops.num_local": 4, "train.loss.steepness_student": 100.0,
    "train.loss.steepness_teacher": 100.0, "train.teacher_head_init": "copy",
}  # fmt: skip


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = getattr(tree, part) if not isinstance(tree, dict) else tree[part]
    return getattr(tree, "value", tree)


def _paper(backbone: str, *extra: str) -> dict[str, Any]:
    return compose_params(ROOT / "conf", ["preset=paper", f"train.backbone={backbone}", *extra])


def _sections(params: dict[str, Any]) -> dict[str, Any]:
    train, crops, res = resolve_training(params, preset=preset_values(ROOT / "params.yaml",
                                                                      params))
    return {"train": train, "crops": crops, "res": res, "data": params["data"]}


def test_recipe_params_cover_every_recipe_field_and_exist_in_params() -> None:
    assert set(RECIPE_PARAMS) == {f.name for f in fields(Recipe)} - {"config"}
    params = read_params(ROOT / "params.yaml")
    for dotted in RECIPE_PARAMS.values():
        assert _get(params, dotted) is None, f"params.yaml: {dotted} must be null (= recipe)"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_paper_preset_resolves_the_released_recipe_key_by_key(name: str) -> None:
    """Acceptance (issue 10): under preset=paper every backbone trains its §12 recipe."""
    s = _sections(_paper(name))
    cfg = {"train": s["train"], "crops": s["crops"], "data": s["data"]}
    if name == "vit_tiny_demo":
        want = dict(DEMO)
    else:
        g, loc, b, ep, steps, lr, queue = TABLE.get(name, (224, 98, 45, 50, 131_400, 1e-5, False))
        want = {**COMMON, "crops.global_size": g, "crops.local_size": loc, "train.batch_size": b,
                "train.epochs": ep, "train.lr_backbone": lr, "train.loss.queue": queue,
                "train.loss.queue_length": 8192}
        assert (COCO_TRAIN // b) * ep == steps
    for dotted, value in want.items():
        got = _get(cfg, dotted)
        assert got == value and type(got) is type(value), f"{name}: {dotted}={got!r} != {value!r}"
    assert s["res"].matches_paper is (name != "vit_tiny_demo")
    assert set(s["res"].origin.values()) == {"recipe"}


def test_demo_defaults_train_exactly_the_demo_recipe() -> None:
    train, crops, res = load_training(ROOT / "params.yaml")
    cfg = {"train": train, "crops": crops}
    for dotted, value in DEMO.items():
        assert _get(cfg, dotted) == value, dotted
    assert res.backbone == "vit_tiny_demo" and res.preset == "demo"
    assert not res.matches_paper
    assert set(res.deviations) >= {"train.head.hidden_dim", "train.head.out_dim",
                                   "train.loss.roi_k", "train.loss.n_refs", "data.train"}
    assert "differ from the paper" in res.summary_line()


def test_explicit_values_win_over_the_preset_and_the_recipe() -> None:
    params = _paper("dinov2_vits14_xr", "train.loss.roi_k=5", "train.batch_size=32",
                    "data.train=voc")
    s = _sections(params)
    res = s["res"]
    assert (s["train"].loss.roi_k, s["train"].batch_size) == (5, 32)
    assert res.origin["roi_k"] == res.origin["batch_size"] == "params"
    assert res.origin["n_refs"] == "recipe" and s["train"].loss.n_refs == 49
    assert res.deviations["train.loss.roi_k"] == {"value": 5, "paper": 7}
    assert res.deviations["train.batch_size"] == {"value": 32, "paper": 64}
    assert res.deviations["data.train"] == {"value": "voc", "paper": "coco"}
    assert "train.loss.roi_k=5 (paper 7)" in res.summary_line()


def test_an_explicit_value_equal_to_the_recipe_is_not_a_deviation() -> None:
    res = _sections(_paper("dino_vits16", "train.epochs=50"))["res"]
    assert res.origin["epochs"] == "params" and res.matches_paper


def test_non_paper_backbones_are_compared_with_the_common_settings_only() -> None:
    paper = paper_recipe(get_spec("ibot_vits16"))
    assert paper["batch_size"] is None and paper["epochs"] is None
    assert paper["head_hidden_dim"] == 2048 and paper["roi_k"] == 7
    assert paper_recipe(get_spec("dinov2_vitb14"))["lr_backbone"] == 5e-6


def test_paper_fixed_settings_are_the_params_defaults() -> None:
    params = read_params(ROOT / "params.yaml")
    for dotted, want in PAPER_FIXED.items():
        if dotted == "data.train":
            continue
        got = _get(params, dotted)
        assert got == pytest.approx(want) if isinstance(want, list) else got == want, dotted


def test_every_backbone_has_a_recipe_with_patch_compatible_globals() -> None:
    for name, spec in BACKBONES.items():
        r = spec.recipe
        assert r.global_size % spec.patch_size == 0, name
        assert r.batch_size * r.n_refs <= r.queue_length  # method.md §6 / §16 #5


def test_presumed_and_demo_recipes_are_labelled() -> None:
    for name in ("ibot_vits16", "cribo_vitb16", "dino_vitb16"):
        assert "unverified" in get_spec(name).recipe.config
    assert "demo" in get_spec("vit_tiny_demo").recipe.config


@pytest.mark.parametrize(("key", "value", "match"), [
    ("train.epochs", 0, "train.epochs: expected a positive value, got 0"),
    ("train.loss.n_refs", -1, "train.loss.n_refs: expected a positive value"),
    ("train.drop_path", -0.1, r"train.drop_path: expected >= 0"),
    ("train.batch_size", "many", "train.batch_size"),
    ("train.backbone", "vit_huge", "unknown backbone 'vit_huge'"),
])
def test_bad_values_name_the_key(key: str, value: Any, match: str) -> None:
    params = copy.deepcopy(read_params(ROOT / "params.yaml"))
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ConfigError, match=match):
        resolve_training(params, source="p.yaml")


def test_a_missing_recipe_key_is_an_error() -> None:
    params = copy.deepcopy(read_params(ROOT / "params.yaml"))
    del params["train"]["loss"]["roi_k"]
    with pytest.raises(ConfigError, match="missing key 'train.loss.roi_k'"):
        resolve_training(params, source="p.yaml")


def test_null_hbird_input_is_the_papers_side_for_the_patch_size() -> None:
    from neco.models.recipes import paper_hbird_input, resolve_eval

    assert (paper_hbird_input("dinov2_vits14_xr"), paper_hbird_input("dino_vits16")) == (504, 512)
    params = copy.deepcopy(read_params(ROOT / "params.yaml"))
    params["eval"]["hbird"]["input_size"] = None
    assert resolve_eval(params, "dinov2_vitb14").hbird.input_size == 504
    with pytest.raises(ConfigError, match="eval.hbird.input_size: null means the paper's side"):
        paper_hbird_input("vit_huge")
