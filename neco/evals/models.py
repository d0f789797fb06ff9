"""The models under evaluation: which weights each eval model name stands for.

* ``init``: the backbone training started from (``init_backbone.safetensors``, written by the
  ``weights`` stage, so the baseline is exactly the student's starting point);
* ``neco``: the trained student (``student_backbone.safetensors``), or ``eval.checkpoint`` when
  set (evaluate without training): an exported safetensors file, a local released NeCo ``.ckpt``
  (``*_model.ckpt`` / ``*_teacher.ckpt``), or ``neco_release:<name>``, a released NeCo model
  fetched from HF ``FunAILab/NeCo`` at ``eval.release_revision``
  (:data:`neco.models.release.RELEASES`; ``eval.checkpoint_key`` picks the student or teacher
  file).

The returned backbone's ``load_report`` records ``source`` (file path, or
``hf://<repo>/<file>@<revision>`` plus ``hf_repo``/``hf_filename``/``hf_revision``), the
``sha256`` of the file read and the ``key_map``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from neco.config import EvalConfig, TrainConfig
from neco.models.export import load_exported
from neco.models.release import release_name
from neco.models.vit import Backbone, FrozenExtractor, load_neco_checkpoint, load_neco_release

MODEL_NAMES = ("init", "neco")


def model_weights_path(model: str, *, models_dir: Path, checkpoint: str | None,
                       init_dir: Path | None = None) -> Path:
    """The file holding ``model``'s weights (``init`` from ``init_dir``, else ``models_dir``).

    Not for ``eval.checkpoint: neco_release:<name>`` (resolved by :func:`load_eval_backbone`).
    """
    if model == "neco" and release_name(checkpoint) is not None:
        raise ValueError(f"eval.checkpoint={checkpoint}: a NeCo release, not a local file")
    if model == "init":
        return (init_dir or models_dir) / "init_backbone.safetensors"
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
        model: ``init`` or ``neco``.
        backbone: ``train.backbone`` (for a release: must be its architecture).
        models_dir: the train stage output.
        checkpoint: ``eval.checkpoint`` (file path, ``neco_release:<name>`` or None).
        checkpoint_key: ``eval.checkpoint_key`` (``student`` / ``teacher``).
        pos_embed_interp: ``train.pos_embed_interp``.
        init_dir: the weights stage output (``init``).
        release_revision: ``eval.release_revision`` (HF revision of a release).

    Raises:
        WeightsError: release unknown / unavailable (offline: at once) / for another backbone,
            or weights not matching the architecture.
        FileNotFoundError: a local weight file is missing.
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
    if not path.is_file():
        key = "eval.checkpoint" if (model == "neco" and checkpoint) else "the train stage output"
        raise FileNotFoundError(f"{path}: weights of eval model {model!r} not found (from {key})")
    if path.suffix == ".ckpt":

        return load_neco_checkpoint(
            path, backbone, which=checkpoint_key, pos_embed_interp=pos_embed_interp
        )
    return load_exported(path, backbone, pos_embed_interp=pos_embed_interp)


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
    training fingerprint). ``eval.checkpoint`` models record the checkpoint instead.
    """
    training: dict[str, Any] | None = None
    if model == "neco" and ev.checkpoint is None:
        resolved = models_dir / "resolved_config.json"
        if resolved.is_file():
            training = json.loads(resolved.read_text(encoding="utf-8"))
    return {
        "backbone": train.backbone,
        "pos_embed_interp": train.pos_embed_interp,
        "weights": {k: _portable(load_report[k]) for k in sorted(load_report)},
        "checkpoint": ev.checkpoint if model == "neco" else None,
        "checkpoint_key": ev.checkpoint_key if model == "neco" and ev.checkpoint else None,
        "training": training,
    }
