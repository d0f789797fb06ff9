"""The training configuration a run really uses: params, preset and backbone recipe merged.

Precedence, highest first (issue 10; README "Configuration"):

1. **params**: a value written in ``conf/config.yaml`` or passed as ``-S key=value``;
2. **preset**: a value the active ``conf/preset/<preset>.yaml`` sets (``demo`` or ``paper``);
3. **recipe**: for every :class:`~neco.models.registry.Recipe` field whose ``params.yaml`` key
   (:data:`~neco.models.registry.RECIPE_PARAMS`) is ``null``, the value of ``train.backbone``'s
   recipe (method.md §12: the released configs; the demo's own values for ``vit_tiny_demo``).

Hydra (through ``dvc exp run``) merges 1 and 2 into ``params.yaml``; :func:`load_training`
fills the ``null`` recipe keys *before* the sections are validated, so every ``TrainConfig`` /
``CropConfig`` a stage holds is complete and nothing downstream sees a ``null``. The
:class:`Resolution` it returns records each value's origin and compares it with the paper
setting for the backbone (its released recipe, the settings every released config shares,
:data:`~neco.models.registry.PAPER_FIXED`): a run that matches the paper says so in one line.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neco.config.loader import ConfigError, build_section, read_params, to_plain
from neco.config.method import CropConfig
from neco.config.presets import preset_values
from neco.config.sections import EvalConfig, TrainConfig
from neco.models.registry import (
    BACKBONES,
    PAPER_FIXED,
    RECIPE_PARAMS,
    BackboneSpec,
    Recipe,
)

#: Recipe fields that differ between released configs: a backbone without a released config
#: (the demo) has no paper value for them.
PER_BACKBONE = ("global_size", "batch_size", "lr_backbone", "epochs", "queue")
#: Recipe fields for which 0 is a valid value (every other numeric one must be positive).
NON_NEGATIVE = ("num_local", "weight_decay", "weight_decay_end", "momentum_start",
                "momentum_end", "drop_path", "queue_push_per_image")
#: The training settings the report's flag names first (issue 10: head, ROI, references, batch,
#: epochs); the others are listed after them.
HEADLINE = ("head_hidden_dim", "head_out_dim", "head_n_layers", "roi_k", "n_refs",
            "batch_size", "epochs")


def paper_recipe(spec: BackboneSpec) -> dict[str, Any]:
    """The paper setting of every recipe field for ``spec`` (``None``: no paper value).

    A backbone with a released config (its recipe's ``config`` names the file) has its own
    recipe as the paper setting. Any other backbone (the demo, ViT-B/16, iBOT, CrIBo) is
    compared with the values every released config shares (the :class:`Recipe` defaults); its
    backbone-specific fields (:data:`PER_BACKBONE`) have no paper value.
    """
    if spec.recipe.config.startswith("models/"):  # a released config file
        values = asdict(spec.recipe)
        values.pop("config")
        return values
    common = asdict(Recipe(global_size=0, batch_size=0, lr_backbone=0.0, epochs=0,
                           queue=False, config=""))
    common.pop("config")
    return {k: (None if k in PER_BACKBONE else v) for k, v in common.items()}


@dataclass(frozen=True)
class Resolution:
    """Where every training value came from, and how it compares with the paper.

    Attributes:
        backbone: ``train.backbone``.
        recipe: provenance of the backbone's recipe (the official config file, or why none).
        preset: the active preset (``params.yaml`` ``preset``), ``None`` if the file has none.
        values: every recipe field (flat :class:`Recipe` names) -> the value used.
        origin: recipe field -> ``params``, ``preset`` or ``recipe``.
        paper: recipe field -> the paper setting (``None``: the paper has none).
        deviations: dotted params key -> ``{"value": used, "paper": paper setting}`` for every
            recipe field and :data:`PAPER_FIXED` key that differs from the paper.
    """

    backbone: str
    recipe: str
    preset: str | None
    values: dict[str, Any]
    origin: dict[str, str]
    paper: dict[str, Any]
    deviations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def matches_paper(self) -> bool:
        """No recipe field or shared setting differs from the paper's."""
        return not self.deviations

    def summary_line(self) -> str:
        """One line: the run matches the paper recipe, or how many settings differ."""
        if self.matches_paper:
            return f"{self.backbone}: matches the paper recipe ({self.recipe})"
        keys = sorted(self.deviations, key=_headline_first)
        return (f"{self.backbone}: {len(keys)} training setting(s) differ from the paper: "
                + ", ".join(f"{k}={_fmt(self.deviations[k]['value'])} (paper "
                            f"{_fmt(self.deviations[k]['paper'])})" for k in keys))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (``models/neco/resolved_config.json``; the report reads it)."""
        return {
            "backbone": self.backbone,
            "recipe": self.recipe,
            "preset": self.preset,
            "values": self.values,
            "origin": self.origin,
            "params_keys": dict(RECIPE_PARAMS),
            "paper": self.paper,
            "deviations": self.deviations,
            "summary_order": sorted(self.deviations, key=_headline_first),
            "matches_paper": self.matches_paper,
            "summary": self.summary_line(),
        }


def _headline_first(key: str) -> tuple[int, str]:
    field_name = next((f for f, p in RECIPE_PARAMS.items() if p == key), "")
    return (HEADLINE.index(field_name) if field_name in HEADLINE else len(HEADLINE), key)


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


def _node(root: dict[str, Any], dotted: list[str], where: str) -> dict[str, Any]:
    node: Any = root
    for part in dotted:
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: missing key {'.'.join(dotted)} (no '{part}')")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: {'.'.join(dotted)}: expected a mapping")
    return node


def same_value(a: Any, b: Any) -> bool:
    """Whether two params values are the same setting: mappings and lists element-wise, bools
    by identity (``True != 1``), numbers to 1e-12 relative (``1e-4`` written as ``0.0001``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return bool(a == b)


def _select(params: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def resolve_training(params: dict[str, Any], *, source: str = "params",
                     preset: dict[str, Any] | None = None,
                     ) -> tuple[TrainConfig, CropConfig, Resolution]:
    """Fill the ``null`` recipe keys of ``params`` and validate ``train`` and ``crops``.

    Args:
        params: a whole params file as plain containers (not modified).
        source: the file name for error messages.
        preset: the active preset's values (nested, as in ``conf/preset/<name>.yaml``); a
            value equal to the preset's is labelled ``preset``. ``None``: no preset labels.

    Returns:
        The complete ``train`` and ``crops`` sections and their :class:`Resolution`.

    Raises:
        ConfigError: unknown backbone, a missing key, or a value of the wrong type (naming the
            file and the key).
    """
    for section in ("train", "crops"):
        if not isinstance(params.get(section), dict):
            raise ConfigError(f"{source}: missing section '{section}'")
    sections = {"train": copy.deepcopy(params["train"]), "crops": copy.deepcopy(params["crops"])}
    name = sections["train"].get("backbone")
    if name not in BACKBONES:
        raise ConfigError(f"{source}: train.backbone: unknown backbone {name!r}; expected one "
                          f"of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    recipe = asdict(spec.recipe)
    provenance = recipe.pop("config")
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, dotted in RECIPE_PARAMS.items():
        section, *path = dotted.split(".")
        parent = _node(sections[section], path[:-1], f"{source}: {section}")
        if path[-1] not in parent:
            raise ConfigError(f"{source}: missing key '{dotted}' (null = the backbone recipe)")
        if parent[path[-1]] is None:
            parent[path[-1]] = recipe[key]
            origin[key] = "recipe"
        else:
            given, preset_value = parent[path[-1]], _select(preset or {}, dotted)
            origin[key] = "preset" if preset_value[0] and same_value(given, preset_value[1]) \
                else "params"
    train = build_section(sections["train"], TrainConfig, key="train", source=source)
    crops = build_section(sections["crops"], CropConfig, key="crops", source=source)
    effective = {"train": to_plain(train), "crops": to_plain(crops)}
    for key, dotted in RECIPE_PARAMS.items():
        values[key] = _select(effective, dotted)[1]
        low = 0 if key in NON_NEGATIVE else 1e-300
        if isinstance(values[key], (int, float)) and not isinstance(values[key], bool) \
                and values[key] < low:
            raise ConfigError(f"{source}: {dotted}: expected "
                              f"{'>= 0' if low == 0 else 'a positive value'}, got {values[key]}")
    paper = paper_recipe(spec)
    deviations: dict[str, dict[str, Any]] = {}
    for key, dotted in RECIPE_PARAMS.items():
        if paper[key] is not None and not same_value(values[key], paper[key]):
            deviations[dotted] = {"value": values[key], "paper": paper[key]}
    fixed_params = {**params, **effective}
    for dotted, want in PAPER_FIXED.items():
        found, got = _select(fixed_params, dotted)
        if found and not same_value(got, want):
            deviations[dotted] = {"value": got, "paper": want}
    preset_name = params.get("preset")
    resolution = Resolution(
        backbone=name, recipe=provenance,
        preset=preset_name if isinstance(preset_name, str) else None,
        values=values, origin=origin, paper=paper, deviations=deviations,
    )
    return train, crops, resolution


def load_training(params_path: str | Path) -> tuple[TrainConfig, CropConfig, Resolution]:
    """:func:`resolve_training` of a params file, with the preset read from ``conf/preset``."""
    path = Path(params_path)
    params = read_params(path)
    return resolve_training(params, source=str(path), preset=preset_values(path, params))


def resolve_train_config(train: TrainConfig, crops: CropConfig) -> dict[str, Any]:
    """The recipe fields of complete ``train``/``crops`` sections (flat :class:`Recipe` names).

    For code that holds already-resolved sections (the training module's ``resolved`` values).
    """
    effective = {"train": to_plain(train), "crops": to_plain(crops)}
    return {"backbone": train.backbone,
            "values": {k: _select(effective, d)[1] for k, d in RECIPE_PARAMS.items()}}


#: The paper's Hummingbird input side per patch size (HB README: 504 for /14, 512 for /16).
PAPER_HBIRD_INPUT = {14: 504, 16: 512}


def paper_hbird_input(backbone: str) -> int:
    """The paper's Hummingbird input side for ``backbone``'s patch size.

    Raises:
        ConfigError: a patch size the paper never used.
    """
    patch = BACKBONES[backbone].patch_size if backbone in BACKBONES else None
    if patch not in PAPER_HBIRD_INPUT:
        raise ConfigError(f"eval.hbird.input_size: null means the paper's side for the patch "
                          f"size (504 for /14, 512 for /16), but {backbone} has patch {patch}; "
                          f"set it explicitly")
    return PAPER_HBIRD_INPUT[patch]


def resolve_eval(params: dict[str, Any], backbone: str, *, source: str = "params"
                 ) -> EvalConfig:
    """The ``eval`` section with its ``null`` = "the paper's for this backbone" values filled.

    Only ``eval.hbird.input_size``: ``null`` (the paper preset) is :func:`paper_hbird_input`.
    """
    ev = copy.deepcopy(params.get("eval"))
    if not isinstance(ev, dict):
        raise ConfigError(f"{source}: missing section 'eval'")
    hbird = ev.get("hbird")
    if isinstance(hbird, dict) and hbird.get("input_size", 0) is None:
        hbird["input_size"] = paper_hbird_input(backbone)
    return build_section(ev, EvalConfig, key="eval", source=source)


def load_eval(params_path: str | Path) -> tuple[TrainConfig, EvalConfig]:
    """The complete ``train`` and ``eval`` sections of a params file (for the eval stages)."""
    train, _, _ = load_training(params_path)
    return train, resolve_eval(read_params(params_path), train.backbone,
                               source=str(params_path))
