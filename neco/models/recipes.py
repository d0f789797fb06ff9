"""Per-backbone training recipes: the released NeCo configs (method.md §12, the D1 defaults).

A recipe holds the values that differ between backbones: crop sizes, batch size, backbone
learning rate, epochs and the reference queue. ``params.yaml`` leaves them ``null`` to take the
recipe, or sets them explicitly; :func:`resolve_recipe` merges the two and records where each
value came from, so a run's resolved configuration is auditable.

Provenance (the ``config`` field): ``experiments/configs/models/{small,base}/*.yml`` of
``vpariza/NeCo`` @ ``3932160``. Entries without a released config say so:

* ``dinov2_vitb14`` lr 5e-6 / ``*_reg`` and ``*_xr`` ViT-B lr 1e-6: as released (method.md §12);
* ``dino_vitb16``, ``ibot_*``, ``cribo_*``: no released config; presumed ``neco_dino.yml`` with
  other weights (unverified; method.md §12). ViT-B/16 keeps B = 45 (unverified);
* ``vit_tiny_demo``: project CPU demo (112 px globals / 48 px locals, 3x3 local tokens).

``queue_length`` keeps the official constructor value 8192 where the queue is off (unused).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Backbone-specific training values.

    Attributes:
        global_size: global crop side in px (518 DINOv2, 224 /16 backbones).
        local_size: local crop side in px (98 official).
        batch_size: images per step over all devices.
        lr_backbone: AdamW lr of the backbone parameter groups.
        epochs: training epochs.
        queue: reference patches from the FIFO queue (DINOv2 family) or from the batch.
        queue_length: slots per queue bank.
        queue_push_per_image: teacher patches pushed per image and step.
        config: provenance of the recipe.
    """

    global_size: int
    local_size: int
    batch_size: int
    lr_backbone: float
    epochs: int
    queue: bool
    queue_length: int
    queue_push_per_image: int
    config: str


_TYPES: dict[str, type] = {
    "global_size": int,
    "local_size": int,
    "batch_size": int,
    "lr_backbone": float,
    "epochs": int,
    "queue": bool,
    "queue_length": int,
    "queue_push_per_image": int,
}


def _dinov2(size: str, lr: float, config: str) -> Recipe:
    return Recipe(
        global_size=518,
        local_size=98,
        batch_size=64 if size == "s" else 16,
        lr_backbone=lr,
        epochs=25,
        queue=True,
        queue_length=8192,
        queue_push_per_image=10,
        config=config,
    )


def _v1(config: str) -> Recipe:
    return Recipe(
        global_size=224,
        local_size=98,
        batch_size=45,
        lr_backbone=1e-5,
        epochs=50,
        queue=False,
        queue_length=8192,
        queue_push_per_image=10,
        config=config,
    )


_PRESUMED = "presumed models/small/neco_dino.yml (no released config; unverified)"

RECIPES: dict[str, Recipe] = {
    "vit_tiny_demo": Recipe(
        global_size=112,
        local_size=48,
        batch_size=16,
        lr_backbone=1e-4,
        epochs=10,
        queue=True,
        queue_length=2048,
        queue_push_per_image=10,
        config="project CPU demo (not a paper recipe)",
    ),
    "dinov2_vits14": _dinov2("s", 1e-5, "models/small/neco_dinov2.yml"),
    "dinov2_vits14_reg": _dinov2("s", 1e-5, "models/small/neco_dinov2r.yml"),
    "dinov2_vits14_xr": _dinov2("s", 1e-5, "models/small/neco_dinov2r_xr.yml"),
    "dinov2_vitb14": _dinov2("b", 5e-6, "models/base/neco_dinov2.yml"),
    "dinov2_vitb14_reg": _dinov2("b", 1e-6, "models/base/neco_dinov2r.yml"),
    "dinov2_vitb14_xr": _dinov2("b", 1e-6, "models/base/neco_dinov2r_xr.yml"),
    "dino_vits16": _v1("models/small/neco_dino.yml"),
    "timetuning_vits16": _v1("models/small/neco_timetuning.yml"),
    "leopart_vits16": _v1("models/small/neco_leopart.yml"),
    "dino_vitb16": _v1(_PRESUMED),
    "ibot_vits16": _v1(_PRESUMED),
    "ibot_vitb16": _v1(_PRESUMED),
    "cribo_vits16": _v1(_PRESUMED),
    "cribo_vitb16": _v1(_PRESUMED),
}


def _check_type(key: str, value: Any) -> Any:
    want = _TYPES[key]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
    if not ok:
        raise TypeError(f"{key}: expected {want.__name__}, got {value!r}")
    if want in (int, float) and value <= 0:
        raise ValueError(f"{key}: expected a positive value, got {value!r}")
    return value


def resolve_recipe(backbone_name: str, overrides: dict[str, Any | None]) -> dict[str, Any]:
    """Merge a backbone's recipe with explicit values; explicit (non-``None``) values win.

    Args:
        backbone_name: registry key (``train.backbone``).
        overrides: subset of the recipe keys (:class:`Recipe` fields except ``config``);
            ``None`` means "take the recipe".

    Returns:
        ``{"backbone": name, "recipe": <provenance>, "values": {key: value},
        "origin": {key: "params" | "recipe"}}`` covering every recipe key.

    Raises:
        KeyError: unknown backbone or override key (listing the valid ones).
        TypeError / ValueError: an override of the wrong type or not positive.
    """
    if backbone_name not in RECIPES:
        raise KeyError(f"train.backbone: no recipe for {backbone_name!r}; known: {sorted(RECIPES)}")
    unknown = sorted(set(overrides) - set(_TYPES))
    if unknown:
        raise KeyError(
            f"recipe overrides: unknown key(s) {unknown}; expected a subset of {sorted(_TYPES)}"
        )
    recipe = asdict(RECIPES[backbone_name])
    provenance = recipe.pop("config")
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, default in recipe.items():
        given = overrides.get(key)
        if given is None:
            values[key], origin[key] = default, "recipe"
        else:
            values[key], origin[key] = _check_type(key, given), "params"
    return {"backbone": backbone_name, "recipe": provenance, "values": values, "origin": origin}


def resolve_train_config(train: Any, crops: Any) -> dict[str, Any]:
    """Resolve the recipe for the ``train`` and ``crops`` params sections.

    Explicit (non-null) params win over the recipe of ``train.backbone``; the crops stage and
    the train stage both call this, so the manifest geometry and the training agree.

    Args:
        train: ``neco.config.TrainConfig``.
        crops: ``neco.method.crops.CropConfig``.

    Returns:
        As :func:`resolve_recipe`.
    """
    overrides = {
        "global_size": crops.global_size,
        "local_size": crops.local_size,
        "batch_size": train.batch_size,
        "lr_backbone": train.lr_backbone,
        "epochs": train.epochs,
        "queue": train.loss.queue,
        "queue_length": train.loss.queue_length,
        "queue_push_per_image": train.loss.queue_push_per_image,
    }
    return resolve_recipe(train.backbone, overrides)

