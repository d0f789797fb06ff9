"""The models under evaluation: which weights each eval model name stands for.

* ``init``: the backbone training started from (``init_backbone.safetensors``, written by the
  ``weights`` stage, so the baseline is exactly the student's starting point);
* ``neco``: the trained student (``student_backbone.safetensors``), or ``eval.checkpoint`` when
  set (an exported safetensors file or a released NeCo Lightning ``.ckpt``; evaluate without
  training).
"""

from __future__ import annotations

from pathlib import Path

import torch

from neco.config import EvalConfig, TrainConfig
from neco.models.export import load_exported
from neco.models.vit import Backbone, FrozenExtractor, load_neco_checkpoint

MODEL_NAMES = ("init", "neco")


def model_weights_path(model: str, *, models_dir: Path, checkpoint: str | None,
                       init_dir: Path | None = None) -> Path:
    """The file holding ``model``'s weights (``init`` from ``init_dir``, else ``models_dir``)."""
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
) -> Backbone:
    """Load the backbone of an eval model, strictly."""
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
    )
