"""The models under evaluation: which weights each eval model name stands for.

* ``init``: the backbone training started from (``init_backbone.safetensors``, written by the
  ``weights`` stage, so the baseline is exactly the student's starting point);
* ``neco``: the trained student (``student_backbone.safetensors``), or ``eval.checkpoint`` when
  set (evaluate without training): an exported safetensors file, a local released NeCo ``.ckpt``
  (``*_model.ckpt`` / ``*_teacher.ckpt``), or ``neco_release:<name>``, a released NeCo model
  fetched from HF ``FunAILab/NeCo`` at ``eval.release_revision``
  (:data:`neco.models.release.RELEASES`; ``eval.checkpoint_key`` picks the student or teacher
  file);
* ``baseline``: the paper's baseline model, for backbones whose registry entry names one
  (``BackboneSpec.baseline``; ``dinov2_vit{s,b}14_xr``: the hub register model
  ``dinov2_vit{s,b}14_reg``, the paper's "DINOv2R" row, method.md §13). It is the same source
  file as ``init`` loaded with the baseline's architecture (4 registers kept;
  ``baseline_backbone.safetensors``, written by the ``weights`` stage); the backbone's forward
  drops the register tokens with CLS, so its patch grid is the init's.

Which models are evaluated (:func:`eval_models`): ``eval.models`` (``init`` and/or ``neco``), plus
``baseline`` **always** when the backbone has one, so the paper's baseline row is never printed
without our measurement of the same model and can never be skipped silently. ``baseline`` may
also be listed in ``eval.models`` (to choose the order); for a backbone without one that is an
error.

The returned backbone's ``load_report`` records ``source`` (file path, or
``hf://<repo>/<file>@<revision>`` plus ``hf_repo``/``hf_filename``/``hf_revision``), the
``sha256`` of the file read and the ``key_map``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from neco.config import ConfigError, EvalConfig, TrainConfig
from neco.models.export import load_exported
from neco.models.init_weights import BASELINE_FILE, INIT_FILE, baseline_backbone
from neco.models.release import release_name
from neco.models.vit import Backbone, FrozenExtractor, load_neco_checkpoint, load_neco_release

MODEL_NAMES = ("init", "neco", "baseline")


def eval_models(models: list[str], backbone: str) -> list[str]:
    """The eval models to run: ``eval.models``, then ``baseline`` if ``backbone`` has one.

    Args:
        models: ``eval.models``.
        backbone: ``train.backbone``.

    Raises:
        ConfigError: an unknown or repeated name, or ``baseline`` listed for a backbone whose
            registry entry names none.
    """
    for name in models:
        if name not in MODEL_NAMES:
            raise ConfigError(
                f"eval.models: unknown model {name!r}; expected some of {list(MODEL_NAMES)}"
            )
    if len(set(models)) != len(models):
        raise ConfigError(f"eval.models: {models} lists a model twice")
    has_baseline = baseline_backbone(backbone) is not None
    if "baseline" in models and not has_baseline:
        raise ConfigError(
            f"eval.models: 'baseline' listed, but backbone {backbone!r} has no paper baseline "
            "other than its init (the registry's BackboneSpec.baseline is None)"
        )
    return list(models) + (["baseline"] if has_baseline and "baseline" not in models else [])


def eval_backbone_name(model: str, backbone: str) -> str:
    """Registry name of the architecture ``model`` is loaded with (the baseline's, or
    ``train.backbone``)."""
    if model == "baseline":
        name = baseline_backbone(backbone)
        if name is None:
            raise ConfigError(f"eval model 'baseline': backbone {backbone!r} has none")
        return name
    return backbone


def model_weights_path(model: str, *, models_dir: Path, checkpoint: str | None,
                       init_dir: Path | None = None) -> Path:
    """The file holding ``model``'s weights (``init``, ``baseline`` from ``init_dir``, else
    ``models_dir``).

    Not for ``eval.checkpoint: neco_release:<name>`` (resolved by :func:`load_eval_backbone`).
    """
    if model == "neco" and release_name(checkpoint) is not None:
        raise ValueError(f"eval.checkpoint={checkpoint}: a NeCo release, not a local file")
    if model == "init":
        return (init_dir or models_dir) / INIT_FILE
    if model == "baseline":
        return (init_dir or models_dir) / BASELINE_FILE
    if model == "neco":
        return Path(checkpoint) if checkpoint else models_dir / "student_backbone.safetensors"
    raise ValueError(f"eval.models: unknown model {model!r}; expected one of {list(MODEL_NAMES)}")


def load_eval_backbone(
    model: str,
    *,
    backbone: str,
    models_dir: Path,
    checkpoint: str | None,
    checkpoint_key: str,
    pos_embed_interp: str,
    init_dir: Path | None = None,
    release_revision: str = "main",
) -> Backbone:
    """Load the backbone of an eval model, strictly.

    Args:
        model: ``init``, ``neco`` or ``baseline`` (loaded as ``backbone``'s paper baseline).
        backbone: ``train.backbone`` (for a release: must be its architecture).
        models_dir: the train stage output.
        checkpoint: ``eval.checkpoint`` (file path, ``neco_release:<name>`` or None).
        checkpoint_key: ``eval.checkpoint_key`` (``student`` / ``teacher``).
        pos_embed_interp: ``train.pos_embed_interp``.
        init_dir: the weights stage output (``init``, ``baseline``).
        release_revision: ``eval.release_revision`` (HF revision of a release).

    Raises:
        WeightsError: release unknown / unavailable (offline: at once) / for another backbone,
            or weights not matching the architecture.
        FileNotFoundError: a local weight file is missing.
        ConfigError: ``baseline`` for a backbone without one.
    """
    name = release_name(checkpoint) if model == "neco" else None
    if name is not None:
        return load_neco_release(
            name,
            backbone,
            which=checkpoint_key,
            revision=release_revision,
            pos_embed_interp=pos_embed_interp,
        )
    path = model_weights_path(
        model, models_dir=models_dir, checkpoint=checkpoint, init_dir=init_dir
    )
    arch = eval_backbone_name(model, backbone)
    if not path.is_file():
        key = {"init": "the weights stage output", "baseline": "the weights stage output"}.get(
            model, "eval.checkpoint" if checkpoint else "the train stage output"
        )
        raise FileNotFoundError(f"{path}: weights of eval model {model!r} not found (from {key})")
    if path.suffix == ".ckpt":
        return load_neco_checkpoint(
            path, backbone, which=checkpoint_key, pos_embed_interp=pos_embed_interp
        )
    return load_exported(path, arch, pos_embed_interp=pos_embed_interp)


def eval_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extractor_for(backbone: Backbone, device: torch.device) -> FrozenExtractor:
    """A frozen fp32 feature extractor on ``device``."""
    return FrozenExtractor(backbone.to(device))


def load_for_eval(
    model: str, train: TrainConfig, ev: EvalConfig, *, models_dir: Path, init_dir: Path
) -> Backbone:
    """:func:`load_eval_backbone` with the ``train``/``eval`` params that select the weights."""
    return load_eval_backbone(
        model,
        backbone=train.backbone,
        models_dir=models_dir,
        checkpoint=ev.checkpoint,
        checkpoint_key=ev.checkpoint_key,
        pos_embed_interp=train.pos_embed_interp,
        init_dir=init_dir,
        release_revision=ev.release_revision,
    )


def _portable(value: Any) -> Any:
    """A load-report value that does not depend on where the workspace lives.

    Absolute paths inside the current directory (the DVC workspace) become relative; other
    absolute paths (a download or HF cache) keep their last two components. The sha256 is
    what identifies the weights; the path is a hint. Metrics files stay byte-identical across
    clones and machines.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path, cwd = Path(value), Path.cwd().resolve()
    try:
        return path.resolve().relative_to(cwd).as_posix()
    except ValueError:
        return "…/" + "/".join(path.parts[-2:])


def model_provenance(
    model: str,
    load_report: dict[str, Any],
    *,
    train: TrainConfig,
    ev: EvalConfig,
    models_dir: Path,
) -> dict[str, Any]:
    """What every metrics file records about an eval model (evaluation.md §1.2, §1.7).

    The backbone variant, ``pos_embed_interp``, the weights actually read (``source``,
    ``sha256``, ``key_map`` and, for a release, its HF file and revision: the load report) and,
    for a ``neco`` model trained by this pipeline, the training settings that produced it (the
    train stage's ``resolved_config.json``: resolved recipe values, their origins and the
    training fingerprint). ``eval.checkpoint`` models record the checkpoint instead. The
    ``baseline`` model records its own architecture as ``backbone`` and ``train.backbone`` as
    ``baseline_of`` (other models have no ``baseline_of`` key: their records are unchanged).
    """
    training: dict[str, Any] | None = None
    if model == "neco" and ev.checkpoint is None:
        resolved = models_dir / "resolved_config.json"
        if resolved.is_file():
            training = json.loads(resolved.read_text(encoding="utf-8"))
    record: dict[str, Any] = {
        "backbone": eval_backbone_name(model, train.backbone),
        "pos_embed_interp": train.pos_embed_interp,
        "weights": {k: _portable(load_report[k]) for k in sorted(load_report)},
        "checkpoint": ev.checkpoint if model == "neco" else None,
        "checkpoint_key": ev.checkpoint_key if model == "neco" and ev.checkpoint else None,
        "training": training,
    }
    if model == "baseline":
        record["baseline_of"] = train.backbone
    return record
