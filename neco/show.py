"""What a run will use and cost, before it runs: ``python -m neco show-config [--plan]``.

:func:`resolve_params` composes ``conf/`` with ``-S`` overrides exactly as ``dvc exp run`` does
(or reads a ``params.yaml``), fills the recipe and per-backbone ``null`` values the stages fill,
and labels each value's **origin**:

* ``params``: written in ``conf/config.yaml`` (``params (-S)``: passed on the command line);
* ``preset``: set by the active ``conf/preset/<preset>.yaml``;
* ``recipe``: ``null`` in params, so taken from the backbone's recipe (method.md §12), or, for
  ``eval.hbird.input_size``, the paper's side for the backbone's patch size.

:func:`stage_views` groups the values by pipeline stage (each stage's declared params, the
``PARAMS`` of ``stages/*.py``) and compares every value that can change a result with the paper
setting for the backbone (:func:`paper_setting`): the paper preset for that backbone, with the
backbone's released recipe, or the settings every released config shares for a backbone that
has none. :func:`plan` states the downloads, disk, optimiser steps and an estimate of GPU hours
per stage (a FLOP model; see :data:`ASSUMED_TFLOPS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neco.config.loader import ConfigError, read_params
from neco.config.presets import compose_params, preset_values
from neco.models.recipes import (
    PAPER_HBIRD_INPUT,
    paper_hbird_input,
    paper_recipe,
    resolve_training,
    same_value,
)
from neco.models.registry import BACKBONES, PAPER_FIXED, RECIPE_PARAMS

#: Keys whose value cannot change a result (hardware, paths, caches): never flagged.
NOT_COMPARED = (
    "runtime.", "report.", "datasets.", "train.backbone", "train.weights", "train.accelerator",
    "train.devices", "train.num_nodes", "train.strategy", "eval.models", "eval.checkpoint",
    "eval.release_revision",
)


@dataclass(frozen=True)
class Value:
    """One resolved leaf: its value, origin and paper setting."""

    key: str
    value: Any
    origin: str
    paper: Any = None
    has_paper: bool = False

    @property
    def differs(self) -> bool:
        return self.has_paper and not same_value(self.value, self.paper)


@dataclass
class Resolved:
    """A fully resolved params tree with an origin per leaf."""

    params: dict[str, Any]
    origin: dict[str, str]
    overrides: tuple[str, ...] = ()
    summary: str = ""
    paper: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return str(self.params["train"]["backbone"])

    def get(self, dotted: str) -> Any:
        node: Any = self.params
        for part in dotted.split("."):
            node = node[part]
        return node


def flatten(tree: Mapping[str, Any], prefix: str = "", *, keep: Sequence[str] = ()
            ) -> dict[str, Any]:
    """Dotted leaves of a nested mapping; mappings under a ``keep`` key stay whole."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted not in keep:
            out.update(flatten(value, f"{dotted}.", keep=keep))
        else:
            out[dotted] = value
    return out


#: Mappings shown and compared as one value.
WHOLE = ("eval.datasets",)


def _override_keys(overrides: Sequence[str]) -> list[str]:
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.append(key)
    return keys


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def resolve_params(params: dict[str, Any], *, params_path: str | Path = "params.yaml",
                   overrides: Sequence[str] = ()) -> Resolved:
    """Fill the ``null`` recipe / per-backbone values of a params tree and label every leaf.

    Args:
        params: a whole params tree (a composition or a ``params.yaml``).
        params_path: where ``conf/`` is looked for (next to it), for the preset labels.
        overrides: the ``-S`` overrides the tree was composed with (labelled ``params (-S)``).
    """
    preset = preset_values(params_path, params)
    train, crops, resolution = resolve_training(params, source=str(params_path), preset=preset)
    from neco.config.loader import to_plain

    filled = json.loads(json.dumps(params))
    filled["train"], filled["crops"] = to_plain(train), to_plain(crops)
    origin: dict[str, str] = {}
    recipe_keys = {dotted: name for name, dotted in RECIPE_PARAMS.items()}
    hbird = filled.get("eval", {}).get("hbird", {})
    hbird_null = isinstance(hbird, dict) and hbird.get("input_size", 0) is None
    if hbird_null:
        hbird["input_size"] = paper_hbird_input(train.backbone)
    preset_flat = flatten(preset or {}, keep=WHOLE)
    over = _override_keys(overrides)
    for key, value in flatten(filled, keep=WHOLE).items():
        if key in recipe_keys:
            origin[key] = resolution.origin[recipe_keys[key]]
        elif key == "eval.hbird.input_size" and hbird_null:
            origin[key] = "recipe"
        elif key in preset_flat and same_value(preset_flat[key], value):
            origin[key] = "preset"
        else:
            origin[key] = "params"
        if origin[key] == "params" and any(key == k or key.startswith(k + ".") for k in over):
            origin[key] = "params (-S)"
        elif origin[key] in ("recipe", "preset") and key in over:
            origin[key] = "params (-S)"
    return Resolved(params=filled, origin=origin, overrides=tuple(overrides),
                    summary=resolution.summary_line())


def paper_setting(backbone: str, conf_dir: str | Path) -> dict[str, Any]:
    """The paper's value of every result-changing key for ``backbone`` (flat, dotted).

    The paper preset with this backbone; recipe keys are the backbone's released recipe, or the
    settings every released config shares where it has none (:func:`paper_recipe`, no value
    for the backbone-specific ones).
    """
    tree = compose_params(conf_dir, ["preset=paper", f"train.backbone={backbone}"])
    hb = tree["eval"]["hbird"]
    if hb.get("input_size") is None and BACKBONES[backbone].patch_size in PAPER_HBIRD_INPUT:
        hb["input_size"] = paper_hbird_input(backbone)
    flat = flatten(tree, keep=WHOLE)
    recipe = paper_recipe(BACKBONES[backbone])
    for name, dotted in RECIPE_PARAMS.items():
        if recipe[name] is None:
            flat.pop(dotted, None)
        else:
            flat[dotted] = recipe[name]
    flat.update(PAPER_FIXED)
    return {k: v for k, v in flat.items() if not k.startswith(NOT_COMPARED)}


def validate_params(params_path: str | Path) -> dict[str, Any]:
    """Validate a whole params file: every section (recipes filled), dataset block and entry."""
    from neco.data.registry import validate_params as validate_file

    def train_and_crops(params: dict[str, Any], source: str) -> dict[str, Any]:
        train, crops, _ = resolve_training(params, source=source)
        return {"train": train, "crops": crops}

    return validate_file(params_path, resolver=train_and_crops)


# --------------------------------------------------------------------------------------------
# Per-stage views


def _stage_params() -> list[tuple[str, list[str], str | None]]:
    """(stage, declared param patterns, foreach over) of every stage, from ``stages/*.py``."""
    import importlib

    out = []
    for stage, module, over in (
        ("download@{dataset}", "stages.download", "sources"),
        ("prepare@{dataset}", "stages.prepare", "sources"),
        ("weights", "stages.weights", None),
        ("crops", "stages.crops", None),
        ("train", "stages.train", None),
        ("features@{dataset}", "stages.features", "eval"),
        ("eval_linear@{dataset}", "stages.eval", "eval"),
        ("eval_overcluster@{dataset}", "stages.eval", "eval"),
        ("eval_hbird@{dataset}", "stages.eval", "eval"),
        ("report", "stages.report", None),
    ):
        params = list(importlib.import_module(module).PARAMS)
        out.append((stage, params, over))
    return out


def stage_views(resolved: Resolved, paper: Mapping[str, Any] | None = None,
                *, include_data: bool = False) -> dict[str, list[Value]]:
    """Every stage's declared values (``stage`` -> values), with origin and paper setting."""
    flat = flatten(resolved.params, keep=WHOLE)
    paper = paper or {}
    views: dict[str, list[Value]] = {}
    for stage, patterns, over in _stage_params():
        if over == "sources":
            if not include_data:
                continue
            items = [(s, {"dataset": s}) for s in resolved.params["data"]["sources"]]
        elif over == "eval":
            items = [(d, {"dataset": d}) for d in resolved.params["eval"]["datasets"]]
        else:
            items = [("", {})]
        for name, subst in items:
            protocol = stage.split("@")[0].removeprefix("eval_") if "eval_" in stage else ""
            rows: dict[str, Value] = {}
            for pattern in patterns:
                prefix = pattern.format(protocol=protocol, **subst)
                for k in flat:
                    if k == prefix or k.startswith(prefix + "."):
                        rows.setdefault(k, Value(
                            key=k, value=flat[k], origin=resolved.origin.get(k, "params"),
                            paper=paper.get(k), has_paper=k in paper))
                    elif prefix.startswith(k + ".") and isinstance(flat[k], Mapping):
                        sub = prefix[len(k) + 1:]  # one entry of a whole mapping
                        want = paper.get(k)
                        rows.setdefault(prefix, Value(
                            key=prefix, value=flat[k].get(sub),
                            origin=resolved.origin.get(k, "params"),
                            paper=want.get(sub) if isinstance(want, Mapping) else None,
                            has_paper=isinstance(want, Mapping) and sub in want))
            views[stage.format(dataset=name)] = list(rows.values())
    return views


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def render_views(resolved: Resolved, views: Mapping[str, Sequence[Value]]) -> str:
    """The ``show-config`` text: one block per stage, ``key: value  [origin]  ⚑ paper: x``."""
    params = resolved.params
    lines = [f"preset: {params.get('preset', '(none)')}    backbone: {resolved.backbone}"
             + (f"    overrides: {' '.join(resolved.overrides)}" if resolved.overrides else ""),
             resolved.summary, ""]
    flagged = 0
    for stage, values in views.items():
        lines.append(f"== {stage}")
        for v in values:
            flag = f"  ⚑ paper: {_fmt(v.paper)}" if v.differs else ""
            flagged += bool(v.differs)
            lines.append(f"  {v.key}: {_fmt(v.value)}  [{v.origin}]{flag}")
        lines.append("")
    lines.append("matches the paper setting" if flagged == 0 else
                 f"⚑ {flagged} value(s) differ from the paper setting for {resolved.backbone}")
    return "\n".join(lines) + "\n"


def views_json(resolved: Resolved, views: Mapping[str, Sequence[Value]]) -> dict[str, Any]:
    """The views as JSON (``--json``; also written next to stage outputs)."""
    return {
        "preset": resolved.params.get("preset"),
        "backbone": resolved.backbone,
        "overrides": list(resolved.overrides),
        "summary": resolved.summary,
        "stages": {
            stage: {v.key: {"value": v.value, "origin": v.origin,
                            **({"paper": v.paper, "differs": v.differs} if v.has_paper else {})}
                    for v in values}
            for stage, values in views.items()
        },
    }


# --------------------------------------------------------------------------------------------
# Plan


#: Approximate archive sizes in GB where ``size`` is null in params (publisher listings;
#: datasets.md §1): used only for the plan.
ARCHIVE_GB = {
    "voc2012": 2.0, "sbd": 1.4, "segclassaug": 0.0, "ade20k": 0.92, "train2017": 18.0,
    "val2017": 0.78, "panoptic": 0.82, "stuff": 1.1, "imagenet_train": 138.0,
}
#: Image counts of the paper's splits (datasets.md; the synthetic counts come from params).
SPLIT_IMAGES = {
    "coco": {"train": 118_287, "val": 5_000, "linear_train": 11_828},
    "voc": {"train": 10_582, "val": 1_449},
    "ade20k": {"train": 20_210, "val": 2_000},
    "in100": {"train": 126_689},
}
EVAL_SOURCE_SPLITS = {"voc": "voc", "ade20k": "ade20k", "coco_things": "coco",
                      "coco_stuff": "coco"}
#: Assumed sustained throughput of one H100-class GPU (TFLOP/s) by backbone precision. fp32
#: without TF32 (the official setting, D3): the 19 GPU hours of the paper's ViT-S/14 run give
#: 1.5 s/step, which this FLOP model reproduces at 33 TFLOP/s (method.md §14.5).
ASSUMED_TFLOPS = {"32": 33.0, "bf16-mixed": 300.0}
#: Worker CPU seconds per training image by ``train.augment_device``: decoding and cutting the
#: 6 views of a COCO-sized image on one core (issue 13: 89 ms; ``cpu``), or only decoding it and
#: drawing the view parameters (``accelerator``: the views are cut on the GPU;
#: ``bench/results/data_path_cpu.md``, 3.2 ms).
DATA_S_PER_IMAGE = {"cpu": 0.089, "accelerator": 0.0032}


def vit_forward_flops(backbone: str, side: int) -> float:
    """Forward FLOPs of one image: L x (24 N D^2 + 4 N^2 D), N = tokens incl. class token."""
    spec = BACKBONES[backbone]
    n = (side // spec.patch_size) ** 2 + 1 + spec.num_registers
    d = spec.embed_dim
    return float(spec.depth * (24 * n * d * d + 4 * n * n * d))


def _images(resolved: Resolved, dataset: str, split: str) -> int:
    if dataset == "synthetic" or dataset not in SPLIT_IMAGES:
        gen = resolved.params.get("datasets", {}).get("synthetic", {}).get("generator", {})
        return int(gen.get("num_train" if split == "train" else "num_val", 0))
    return SPLIT_IMAGES[dataset].get(split, 0)


def plan(resolved: Resolved, *, workers: int | None = None) -> dict[str, Any]:
    """Downloads, disk, optimiser steps and GPU-hour estimates of a resolved configuration."""
    p = resolved.params
    downloads: dict[str, float] = {}
    for src in p["data"]["sources"]:
        block = p.get("datasets", {}).get(src, {})
        gb = 0.0
        for name, arch in (block.get("archives") or {}).items():
            if name == "segclassaug" and block.get("trainaug_masks") != "drsleep_zip":
                continue
            if arch.get("local_path"):
                continue
            size = arch.get("size")
            gb += size / 1e9 if size else ARCHIVE_GB.get(name, 0.0)
        downloads[src] = round(gb, 2)
    total_dl = sum(downloads.values())
    train, crops = p["train"], p["crops"]
    b = int(train["batch_size"])
    n_train = _images(resolved, p["data"]["train"], "train")
    steps_per_epoch = n_train // b
    steps = steps_per_epoch * int(train["epochs"])
    if train.get("max_steps") is not None:
        steps = min(steps, int(train["max_steps"]))
    backbone = resolved.backbone
    g, loc = int(crops["global_size"]), int(crops["local_size"])
    ng, nl = int(crops["num_global"]), int(crops["num_local"])
    student = 3 * (ng * vit_forward_flops(backbone, g) + nl * vit_forward_flops(backbone, loc))
    teacher = 2 * vit_forward_flops(backbone, g)
    tflops = ASSUMED_TFLOPS.get(str(train["precision"]), 33.0)
    compute_s = b * (student + teacher) / (tflops * 1e12)
    n_workers = workers if workers is not None else (p["runtime"]["num_workers"] or 0)
    per_image = DATA_S_PER_IMAGE.get(str(train.get("augment_device", "cpu")), 0.089)
    data_s = b * per_image / max(1, n_workers)
    step_s = max(compute_s, data_s)
    stages: dict[str, float] = {"train": steps * step_s / 3600}
    ev = p["eval"]
    n_models = len(ev["models"]) + (1 if BACKBONES[backbone].baseline else 0)
    feat_bytes = 0.0
    for ds, src in ev["datasets"].items():
        n_val = _images(resolved, src if ds in EVAL_SOURCE_SPLITS else ds, "val")
        n_tr = (SPLIT_IMAGES["coco"]["linear_train"] if src == "coco" and ds != "synthetic"
                else _images(resolved, src, "train"))
        f448 = vit_forward_flops(backbone, int(ev["linear"]["input_size"]))
        lin = int(ev["linear"]["epochs"]) * (n_tr + n_val) * f448 * n_models
        hb = ev["hbird"]
        f504 = vit_forward_flops(backbone, int(hb["input_size"]))
        hbird = (int(hb["augmentation_epochs"]) * n_tr + n_val) * f504 * n_models
        feats = n_val * vit_forward_flops(backbone, int(ev["features"]["input_size"])) * n_models
        stages[f"eval_linear@{ds}"] = lin / (ASSUMED_TFLOPS["32"] * 1e12) / 3600
        stages[f"eval_hbird@{ds}"] = hbird / (ASSUMED_TFLOPS["32"] * 1e12) / 3600
        stages[f"features@{ds}"] = feats / (ASSUMED_TFLOPS["32"] * 1e12) / 3600
        tokens = (int(ev["features"]["input_size"]) // BACKBONES[backbone].patch_size) ** 2
        feat_bytes += n_val * tokens * BACKBONES[backbone].embed_dim * 4 * n_models
    disk = 2.0 * total_dl + feat_bytes / 1e9 + 1.0
    return {
        "downloads_gb": downloads, "download_total_gb": round(total_dl, 2),
        "disk_gb": round(disk, 1),
        "train_images": n_train, "batch_size": b, "steps_per_epoch": steps_per_epoch,
        "epochs": int(train["epochs"]), "optimizer_steps": steps,
        "s_per_step": {"compute": round(compute_s, 3), "data": round(data_s, 3),
                       "workers": n_workers},
        "gpu_hours": {k: round(v, 2) for k, v in stages.items()},
        "gpu_hours_total": round(sum(stages.values()), 1),
        "accelerator": str(train.get("accelerator")),
        "assumptions": (f"FLOP model L(24ND^2+4N^2D) per image at {tflops:g} TFLOP/s "
                        f"(precision {train['precision']}); data {per_image * 1e3:.1f} ms per "
                        f"image per worker (augment_device {train.get('augment_device')}); "
                        f"disk = 2 x downloads (archives + extracted) + val feature caches"),
    }


def render_plan(pl: Mapping[str, Any]) -> str:
    dl = ", ".join(f"{k} {v:g} GB" for k, v in pl["downloads_gb"].items()) or "nothing"
    lines = [
        "Plan (estimates):",
        f"  download: {dl} (total {pl['download_total_gb']:g} GB)",
        f"  disk: about {pl['disk_gb']:g} GB",
        f"  train: {pl['train_images']:,} images / batch {pl['batch_size']} = "
        f"{pl['steps_per_epoch']:,} steps/epoch x {pl['epochs']} epochs -> "
        f"{pl['optimizer_steps']:,} optimiser steps; {pl['s_per_step']['compute']:g} s/step "
        f"compute, {pl['s_per_step']['data']:g} s/step data with "
        f"{pl['s_per_step']['workers']} workers",
    ]
    if pl.get("accelerator") == "cpu":
        lines.append("  train.accelerator is cpu: no GPU-hour estimate (the demo takes minutes)")
    else:
        lines += [
            "  GPU hours per stage: " + ", ".join(f"{k} {v:g}" for k, v in
                                                 pl["gpu_hours"].items()),
            f"  total: about {pl['gpu_hours_total']:g} GPU hours"
            + ("; data-bound: raise runtime.num_workers or set train.augment_device: "
               "accelerator" if pl["s_per_step"]["data"] > pl["s_per_step"]["compute"] else ""),
            f"  ({pl['assumptions']})",
        ]
    return "\n".join(lines) + "\n"


def load_resolved(params_path: str | Path, overrides: Sequence[str] = (), *,
                  compose: bool | None = None) -> Resolved:
    """Resolve ``params.yaml`` as is, or the composition of ``conf/`` with ``overrides``.

    ``compose`` None: compose when there are overrides (``dvc exp run`` semantics), else read
    the file.
    """
    from neco.config.presets import conf_dir_for

    path = Path(params_path)
    if compose or (compose is None and overrides):
        params = compose_params(conf_dir_for(path), list(overrides))
    else:
        params = read_params(path)
    if "train" not in params:
        raise ConfigError(f"{path}: no train section")
    return resolve_params(params, params_path=path, overrides=overrides)


def stage_config_record(params_path: str | Path, stage: str) -> dict[str, Any]:
    """One stage's resolved values for its outputs: ``{key: {value, origin[, paper, differs]}}``
    plus ``preset``, ``backbone`` and ``matches_paper`` (``stage`` as in ``dvc.yaml``, e.g.
    ``eval_linear@voc``)."""
    from neco.config.presets import conf_dir_for

    resolved = load_resolved(params_path)
    conf = conf_dir_for(params_path)
    paper = paper_setting(resolved.backbone, conf) if (conf / "preset").is_dir() else {}
    views = stage_views(resolved, paper)
    if stage not in views:
        raise ConfigError(f"{params_path}: no stage {stage!r} in this configuration; "
                          f"expected one of {sorted(views)}")
    values = views[stage]
    return {
        "preset": resolved.params.get("preset"),
        "backbone": resolved.backbone,
        "matches_paper": not any(v.differs for v in values),
        "values": {v.key: {"value": v.value, "origin": v.origin,
                           **({"paper": v.paper, "differs": v.differs} if v.has_paper else {})}
                   for v in values},
    }
