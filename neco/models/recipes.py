"""Resolution of the per-backbone training recipe against explicit params (method.md §12).

A recipe (:class:`neco.models.registry.Recipe`, the ``recipe`` field of each registry entry,
with its provenance) holds the values that differ between backbones: crop sizes, batch size,
backbone learning rate, epochs and the reference queue. ``params.yaml`` leaves them ``null`` to
take the recipe, or sets them explicitly; :func:`resolve_recipe` merges the two and records
where each value came from, so a run's resolved configuration is auditable.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from neco.models.registry import BACKBONES

#: The overridable recipe keys (every :class:`~neco.models.registry.Recipe` field except
#: ``config``) and their types.
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
        overrides: subset of the recipe keys (``Recipe`` fields except ``config``);
            ``None`` means "take the recipe".

    Returns:
        ``{"backbone": name, "recipe": <provenance>, "values": {key: value},
        "origin": {key: "params" | "recipe"}}`` covering every recipe key.

    Raises:
        KeyError: unknown backbone or override key (listing the valid ones).
        TypeError / ValueError: an override of the wrong type or not positive.
    """
    if backbone_name not in BACKBONES:
        raise KeyError(
            f"train.backbone: no recipe for {backbone_name!r}; known: {sorted(BACKBONES)}"
        )
    unknown = sorted(set(overrides) - set(_TYPES))
    if unknown:
        raise KeyError(
            f"recipe overrides: unknown key(s) {unknown}; expected a subset of {sorted(_TYPES)}"
        )
    recipe = asdict(BACKBONES[backbone_name].recipe)
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
