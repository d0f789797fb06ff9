"""Where a run's initial backbone weights come from (the ``weights`` stage).

``train.weights`` (a local file in the backbone's official format, an exported safetensors file,
or ``random``) overrides the registry's official source; official files are downloaded once into
``train.weights_cache``. This module imports no torch, so an offline failure is reported within
about a second of the stage starting, naming the URL and the ``train.weights`` override.

The paper's baseline (:func:`baseline_backbone`): where a backbone's registry entry names a
``baseline`` (``dinov2_vit{s,b}14_xr`` -> ``dinov2_vit{s,b}14_reg``: the paper's "DINOv2R" row is
the hub register model, method.md §13), the ``weights`` stage also loads the *same* source file
strictly through the baseline's key map (registers kept) and writes it as the ``baseline`` eval
model. :func:`baseline_weights_source` says which file that is, or fails at once when none can be
had (an exported ``*.safetensors`` ``train.weights`` holds no register tokens).

Pretraining (:func:`pretrain_skip_reason`, :func:`pretrained_source`): a backbone without
published weights (``vit_tiny_demo``) and no ``train.weights`` gets its init from the
``pretrain`` stage (``models/pretrain``: a self-supervised backbone and its record); the record
says why the stage did nothing otherwise, and the ``weights`` stage refuses a record written for
another backbone or a file whose digest differs from the record's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neco.config import ConfigError
from neco.models.fetch import resolve_weights_file, weights_cache_dir
from neco.models.registry import BACKBONES, SourceKind, WeightsError

#: File names inside the ``weights`` stage output (``models/init``).
INIT_FILE = "init_backbone.safetensors"
BASELINE_FILE = "baseline_backbone.safetensors"
#: File names inside the ``pretrain`` stage output (``models/pretrain``).
PRETRAIN_FILE = "pretrained_backbone.safetensors"
PRETRAIN_RECORD = "pretrain.json"


@dataclass(frozen=True)
class WeightsParams:
    """The keys of the ``train`` section the ``weights`` stage reads.

    Attributes:
        backbone: registry key.
        weights: local weights file or ``random``; None = the official source.
        weights_cache: download cache directory; None = ``~/.cache/neco/weights``.
    """

    backbone: str
    weights: str | None
    weights_cache: str | None


def initial_weights_source(params: WeightsParams, *, progress: bool) -> str:
    """The file (or ``random``) the initial backbone is built from, fetching it if needed.

    Raises:
        neco.config.ConfigError: unknown backbone (listing the registered ones).
        neco.models.fetch.WeightsError: the official file cannot be had (offline: within seconds,
            naming the URL, the cache path and ``train.weights``).
    """
    if params.backbone not in BACKBONES:
        raise ConfigError(
            f"train.backbone: unknown backbone {params.backbone!r}; registered: {sorted(BACKBONES)}"
        )
    if params.weights is not None:
        return params.weights
    spec = BACKBONES[params.backbone]
    if spec.weights.kind is SourceKind.RANDOM:
        return "random"
    path = resolve_weights_file(
        params.backbone,
        spec.weights,
        cache_dir=weights_cache_dir(params.weights_cache),
        progress=progress,
    )
    return str(path)


def baseline_backbone(backbone: str) -> str | None:
    """Registry name of ``backbone``'s paper-baseline model, ``None`` if it is the init itself.

    Raises:
        neco.config.ConfigError: unknown backbone, or a registry ``baseline`` that is not itself
            registered (a registry bug, reported rather than skipped).
    """
    if backbone not in BACKBONES:
        raise ConfigError(
            f"train.backbone: unknown backbone {backbone!r}; registered: {sorted(BACKBONES)}"
        )
    name = BACKBONES[backbone].baseline
    if name is not None and name not in BACKBONES:
        raise ConfigError(f"registry: baseline {name!r} of {backbone!r} is not registered")
    return name


def baseline_weights_source(params: WeightsParams, source: str) -> str | None:
    """The file (or ``random``) the paper-baseline model is built from; ``None`` if no baseline.

    It is ``source``, the init's own file: the baseline is the same weights under another
    architecture (``random``: a seeded random init of that architecture, no file to share).

    Args:
        params: the ``weights`` stage's ``train`` keys.
        source: what :func:`initial_weights_source` returned.

    Raises:
        neco.models.registry.WeightsError: ``train.weights`` is an exported ``*.safetensors``
            file, which holds the init architecture's tensors only (no register tokens).
    """
    name = baseline_backbone(params.backbone)
    if name is None:
        return None
    if source != "random" and source.endswith(".safetensors"):
        raise WeightsError(
            f"train.weights={source}: an exported file of {params.backbone!r}, which cannot "
            f"build the paper's baseline model {name!r} (its register tokens are not in it). "
            f"Set train.weights to the official weight file "
            f"({BACKBONES[params.backbone].weights.filename}) or to null (download it)"
        )
    return source


def pretrain_skip_reason(params: WeightsParams, steps: int) -> str | None:
    """Why the ``pretrain`` stage has nothing to do for these params, or None if it pretrains.

    It pretrains only a registry backbone without published weights (``SourceKind.RANDOM``),
    with ``train.weights`` null and ``pretrain.steps`` > 0.

    Raises:
        neco.config.ConfigError: unknown backbone, or negative ``pretrain.steps``.
    """
    if params.backbone not in BACKBONES:
        raise ConfigError(
            f"train.backbone: unknown backbone {params.backbone!r}; registered: {sorted(BACKBONES)}"
        )
    if steps < 0:
        raise ConfigError(f"pretrain.steps={steps}: expected >= 0 (0 = no pretraining)")
    if params.weights is not None:
        return f"train.weights={params.weights!r} gives the init"
    if BACKBONES[params.backbone].weights.kind is not SourceKind.RANDOM:
        return f"{params.backbone} has published weights"
    if steps == 0:
        return "pretrain.steps=0: the seeded random init"
    return None


def read_pretrain_record(pretrain_dir: Path) -> dict[str, Any]:
    """The ``pretrain`` stage's record (``models/pretrain/pretrain.json``).

    Raises:
        FileNotFoundError: no record (run ``dvc repro pretrain``).
        ValueError: not a JSON object with ``backbone`` and ``pretrained``.
    """
    path = Path(pretrain_dir) / PRETRAIN_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pretraining record; run `dvc repro pretrain` first")
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not {"backbone", "pretrained"} <= set(record):
        raise ValueError(f"{path}: expected a JSON object with 'backbone' and 'pretrained'")
    return record


def pretrained_source(pretrain_dir: Path, params: WeightsParams, steps: int) -> str | None:
    """The pretrained backbone file the init is built from, or None (no pretraining applies).

    Checks the record against the params (same backbone, pretraining expected iff the record
    says it ran) and the file against the record's sha256, so a stale or foreign file is never
    taken as the init.

    Raises:
        ValueError: the record disagrees with the params or the file with the record.
        FileNotFoundError: the record or the file it names is missing.
    """
    from neco.io import sha256_file

    record = read_pretrain_record(pretrain_dir)
    expected = pretrain_skip_reason(params, steps) is None
    where = Path(pretrain_dir) / PRETRAIN_RECORD
    if record["backbone"] != params.backbone or bool(record["pretrained"]) != expected:
        raise ValueError(
            f"{where}: written for backbone {record['backbone']!r} (pretrained="
            f"{record['pretrained']}), but train.backbone={params.backbone!r} expects "
            f"pretrained={expected}; rerun `dvc repro pretrain`"
        )
    if not expected:
        return None
    path = Path(pretrain_dir) / PRETRAIN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: named by {where} but missing; rerun `dvc repro pretrain`")
    digest = sha256_file(path)
    if digest != record.get("sha256"):
        raise ValueError(
            f"{path}: sha256 {digest[:12]}... differs from the record's "
            f"{str(record.get('sha256'))[:12]}...; rerun `dvc repro pretrain`"
        )
    return str(path)
