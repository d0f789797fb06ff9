"""The section schemas that nest component configs (importing them imports torch).

``neco.config`` holds the loader and the light sections and re-exports these lazily, so
``from neco.config import TrainConfig`` keeps working. Schemas state types only; every value,
with a comment, lives in ``params.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from neco.config import DataConfig, EmaTiming, HeadConfig, Precision, RuntimeConfig, TeacherHeadInit
from neco.crops import CropConfig
from neco.evals.hbird import HbirdConfig
from neco.evals.linear import LinearConfig
from neco.evals.overcluster import ClusterConfig
from neco.neco_loss import LossConfig
from neco.report import ReportConfig

__all__ = ["EvalConfig", "FeaturesConfig", "SECTION_SCHEMAS", "TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """NeCo post-pretraining (method.md §4-§12). ``None`` recipe fields take the backbone recipe.

    Every field is commented in ``params.yaml``; the resolved values (recipe merged with the
    explicit ones) are written by the train stage to ``models/neco/resolved_config.json``.
    """

    backbone: str
    weights: Optional[str]
    weights_cache: Optional[str]
    pos_embed_interp: str
    epochs: Optional[int]
    batch_size: Optional[int]
    lr_backbone: Optional[float]
    lr_heads: float
    final_lr: float
    weight_decay: float
    weight_decay_end: float
    momentum_start: float
    momentum_end: float
    ema_timing: EmaTiming
    teacher_head_init: TeacherHeadInit
    drop_path: float
    trainable_blocks: Optional[list[int]]
    grad_clip: Optional[float]
    jitter_strength: float
    blur_strength: float
    head: HeadConfig
    loss: LossConfig
    precision: Precision
    accelerator: str
    devices: int
    strategy: str
    max_steps: Optional[int]
    checkpoint_every_n_epochs: int
    log_every_n_steps: int


@dataclass(frozen=True)
class FeaturesConfig:
    """Cached val-split features shared by the linear and clustering protocols.

    Attributes:
        input_size: square input side S in pixels (448 in the paper; divisible by the patch).
        batch_size: images per forward pass.
    """

    input_size: int
    batch_size: int


@dataclass(frozen=True)
class EvalConfig:
    """Dense evaluation (evaluation.md).

    Attributes:
        datasets: evaluation datasets (``neco.data.registry.DATASETS`` names).
        models: models under evaluation: ``init`` (the starting backbone) and/or ``neco``.
        checkpoint: evaluate this file as ``neco`` instead of the trained student (an exported
            safetensors or a released NeCo ``.ckpt``); None = the train stage's student.
        checkpoint_key: which network of a NeCo ``.ckpt`` to take (``student`` or ``teacher``).
    """

    datasets: list[str]
    models: list[str]
    checkpoint: Optional[str]
    checkpoint_key: str
    features: FeaturesConfig
    linear: LinearConfig
    overcluster: ClusterConfig
    hbird: HbirdConfig


SECTION_SCHEMAS: dict[str, type] = {
    "runtime": RuntimeConfig,
    "data": DataConfig,
    "crops": CropConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "report": ReportConfig,
}
