"""Per-backbone recipes (method.md §12) and their resolution against explicit params."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace as NS

import pytest

from neco.models.recipes import _TYPES, resolve_recipe, resolve_train_config
from neco.models.registry import BACKBONES, Recipe, get_spec

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


_PRESUMED = "presumed models/small/neco_dino.yml (no released config; unverified)"
_V1 = (224, 98, 45, 1e-05, 50, False, 8192, 10)

# Regression reference: resolve_train_config with all-null params, per backbone, as resolved by
# the former recipe table of neco/models/recipes.py (before the recipes moved into the registry):
# (global, local, B, lr_backbone, epochs, queue, queue_length, queue_push_per_image, config).
RESOLVED = {
    "vit_tiny_demo": (112, 48, 16, 1e-4, 10, True, 2048, 10,
                      "project CPU demo (not a paper recipe)"),
    "dinov2_vits14": (518, 98, 64, 1e-5, 25, True, 8192, 10, "models/small/neco_dinov2.yml"),
    "dinov2_vits14_reg": (518, 98, 64, 1e-5, 25, True, 8192, 10, "models/small/neco_dinov2r.yml"),
    "dinov2_vits14_xr": (518, 98, 64, 1e-5, 25, True, 8192, 10,
                         "models/small/neco_dinov2r_xr.yml"),
    "dinov2_vitb14": (518, 98, 16, 5e-6, 25, True, 8192, 10, "models/base/neco_dinov2.yml"),
    "dinov2_vitb14_reg": (518, 98, 16, 1e-6, 25, True, 8192, 10, "models/base/neco_dinov2r.yml"),
    "dinov2_vitb14_xr": (518, 98, 16, 1e-6, 25, True, 8192, 10,
                         "models/base/neco_dinov2r_xr.yml"),
    "dino_vits16": (*_V1, "models/small/neco_dino.yml"),
    "timetuning_vits16": (*_V1, "models/small/neco_timetuning.yml"),
    "leopart_vits16": (*_V1, "models/small/neco_leopart.yml"),
    "dino_vitb16": (*_V1, _PRESUMED),
    "ibot_vits16": (*_V1, _PRESUMED),
    "ibot_vitb16": (*_V1, _PRESUMED),
    "cribo_vits16": (*_V1, _PRESUMED),
    "cribo_vitb16": (*_V1, _PRESUMED),
}  # fmt: skip
KEYS = ("global_size", "local_size", "batch_size", "lr_backbone", "epochs", "queue",
        "queue_length", "queue_push_per_image")  # fmt: skip


def _null_params(backbone: str) -> tuple[NS, NS]:
    loss = NS(queue=None, queue_length=None, queue_push_per_image=None)
    train = NS(backbone=backbone, batch_size=None, lr_backbone=None, epochs=None, loss=loss)
    return train, NS(global_size=None, local_size=None)


def test_regression_reference_covers_the_registry() -> None:
    assert set(RESOLVED) == set(BACKBONES)  # a new entry needs its reference row here
    assert set(_TYPES) == {f.name for f in fields(Recipe)} - {"config"} == set(KEYS)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_resolved_values_unchanged_by_the_registry_move(name: str) -> None:
    out = resolve_train_config(*_null_params(name))
    *want, config = RESOLVED[name]
    got = [out["values"][k] for k in KEYS]
    assert got == want and out["recipe"] == config
    assert [type(v) for v in got] == [type(v) for v in want]  # int stays int, lr is float
    assert set(out["origin"].values()) == {"recipe"} and out["backbone"] == name
    assert out["values"] == {k: getattr(get_spec(name).recipe, k) for k in KEYS}


def test_every_backbone_has_a_recipe_with_patch_compatible_globals() -> None:
    for name, spec in BACKBONES.items():
        r = spec.recipe
        assert isinstance(r, Recipe), name
        assert r.global_size % spec.patch_size == 0, name
        assert r.batch_size * 49 <= r.queue_length  # method.md §6 / §16 #5 at the official n


@pytest.mark.parametrize("name", sorted(TABLE))
def test_released_recipes_match_the_spec_table(name: str) -> None:
    g, loc, b, ep, steps, lr, queue = TABLE[name]
    r = get_spec(name).recipe
    assert (r.global_size, r.local_size, r.batch_size, r.epochs, r.queue) == (g, loc, b, ep, queue)
    assert r.lr_backbone == pytest.approx(lr, rel=0)
    assert (COCO_TRAIN // r.batch_size) * r.epochs == steps  # drop_last steps (method.md §10)
    assert r.config.startswith("models/")
    if queue:
        assert (r.queue_length, r.queue_push_per_image) == (8192, 10)


def test_presumed_and_demo_recipes_are_labelled() -> None:
    for name in ("ibot_vits16", "cribo_vitb16", "dino_vitb16"):
        assert "unverified" in get_spec(name).recipe.config
    demo = get_spec("vit_tiny_demo").recipe
    assert (demo.global_size, demo.local_size, demo.batch_size, demo.queue) == (112, 48, 16, True)
    assert "demo" in demo.config


def test_resolve_recipe_explicit_values_win_and_origins_are_recorded() -> None:
    out = resolve_recipe(
        "dinov2_vits14_xr",
        {"batch_size": 32, "lr_backbone": None, "epochs": 1, "queue": False, "global_size": None},
    )
    assert out["backbone"] == "dinov2_vits14_xr"
    assert out["recipe"] == "models/small/neco_dinov2r_xr.yml"
    v, o = out["values"], out["origin"]
    assert (v["batch_size"], v["epochs"], v["queue"]) == (32, 1, False)
    assert (v["lr_backbone"], v["global_size"], v["local_size"]) == (1e-5, 518, 98)
    assert o["batch_size"] == o["epochs"] == o["queue"] == "params"
    assert o["lr_backbone"] == o["global_size"] == o["local_size"] == "recipe"
    assert (
        set(v)
        == set(o)
        == {
            "global_size",
            "local_size",
            "batch_size",
            "lr_backbone",
            "epochs",
            "queue",
            "queue_length",
            "queue_push_per_image",
        }
    )


def test_resolve_recipe_rejects_bad_input() -> None:
    assert resolve_recipe("dino_vits16", {"lr_backbone": 1})["values"]["lr_backbone"] == 1.0
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['lr'\]"):
        resolve_recipe("dino_vits16", {"lr": 1e-4})
    with pytest.raises(KeyError, match="no recipe for 'vit_huge'"):
        resolve_recipe("vit_huge", {})
    with pytest.raises(TypeError, match="batch_size: expected int, got True"):
        resolve_recipe("dino_vits16", {"batch_size": True})
    with pytest.raises(TypeError, match="queue: expected bool"):
        resolve_recipe("dino_vits16", {"queue": 1})
    with pytest.raises(ValueError, match="epochs: expected a positive value"):
        resolve_recipe("dino_vits16", {"epochs": 0})


def test_resolve_train_config_reads_the_sections() -> None:
    loss = NS(queue=None, queue_length=4096, queue_push_per_image=None)
    train = NS(backbone="vit_tiny_demo", batch_size=None, lr_backbone=None, epochs=2, loss=loss)
    out = resolve_train_config(train, NS(global_size=None, local_size=64))
    assert out["values"]["local_size"] == 64 and out["origin"]["local_size"] == "params"
    assert out["values"]["queue_length"] == 4096 and out["values"]["epochs"] == 2
    assert out["values"]["global_size"] == 112 and out["origin"]["queue"] == "recipe"
