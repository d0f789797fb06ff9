"""The ``pretrain`` section: self-supervised pretraining of a backbone without published weights.

Types only (STYLE P3); every value, with its comment, lives in ``conf/config.yaml``. Read by the
``pretrain`` stage (``neco.pretrain.run_pretraining``) and by the study script
(``bench/demo_study.py``). Enums rather than ``Literal`` (OmegaConf 2.3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TargetNorm(str, enum.Enum):
    """How teacher logits become targets (collapse prevention).

    * ``centering``: DINO, softmax((t - c) / tau_t) with c an EMA of the batch mean;
    * ``sinkhorn``: SwAV / DINOv2, Sinkhorn-Knopp equipartition of the batch over prototypes.
    """

    CENTERING = "centering"
    SINKHORN = "sinkhorn"


class Objective(str, enum.Enum):
    """What the student is trained to predict from the EMA teacher.

    * ``distillation``: DINO/iBOT-style soft prototype assignments (``target_norm``);
    * ``contrastive``: MoCo-style InfoNCE (He et al. 2020, https://arxiv.org/abs/1911.05722;
      dense: Wang et al. 2021 DenseCL, https://arxiv.org/abs/2011.09157), the positive of a
      student token being the teacher token of the same image location, the negatives the
      teacher tokens of the other images in the batch;
    * ``masked_hog``: MaskFeat (Wei et al. 2022, https://arxiv.org/abs/2112.09133), masked
      patches regress the HOG of their pixels; no teacher, one view per image
      (``neco.pretrain.maskfeat``).
    """

    DISTILLATION = "distillation"
    CONTRASTIVE = "contrastive"
    MASKED_HOG = "masked_hog"


class ExportNet(str, enum.Enum):
    """Which network becomes the init: the EMA teacher (DINO's evaluated model) or the student."""

    TEACHER = "teacher"
    STUDENT = "student"


@dataclass(frozen=True)
class PretrainHeadConfig:
    """Projection heads (DINO head: MLP, L2-normalised bottleneck, weight-normed prototypes).

    Attributes:
        hidden_dim: MLP hidden width (DINO 2048).
        bottleneck_dim: width before the prototypes (DINO 256).
        n_layers: Linear layers of the MLP (DINO 3).
        num_prototypes_cls: prototypes K of the class-token head (DINO 65536).
        num_prototypes_patch: prototypes of the patch head (iBOT 8192).
    """

    hidden_dim: int
    bottleneck_dim: int
    n_layers: int
    num_prototypes_cls: int
    num_prototypes_patch: int


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run.

    The backbone is ``train.backbone`` (trained from its seeded random init); the stage runs
    only for registry backbones without published weights and ``train.weights: null``.

    Attributes:
        steps: optimiser steps; 0 = no pretraining (the seeded random init, as before).
        seed: seed of the init, the crops, the augmentation and the image sampling.
        generator_seed: synthetic generator seed of the pretraining images; must differ from
            the seed of the dataset NeCo trains and is evaluated on (disjoint images).
        num_images: pretraining images rendered from that seed.
        batch_size: images per step.
        lr: AdamW peak learning rate (after the linear warm-up).
        min_lr: cosine floor of the learning rate.
        warmup_steps: linear learning-rate warm-up.
        weight_decay: weight decay at step 0 (cosine to ``weight_decay_end``).
        weight_decay_end: weight decay at the last step.
        momentum_start: EMA teacher momentum at step 0 (cosine to ``momentum_end``); for short
            runs it must let the teacher move: 0.996 has a half-life of 173 steps.
        momentum_end: EMA momentum at the last step.
        grad_clip: gradient-norm clip of the student (DINO 3.0); None = off.
        drop_path: student stochastic depth (teacher 0).
        global_size: global crop side in px.
        local_size: local crop side in px.
        num_local: local crops per image (2 globals always).
        global_scale: area fraction range of the global crops.
        local_scale: area fraction range of the local crops.
        jitter_strength: ColorJitter strength s (0.8 s, 0.8 s, 0.8 s, 0.2 s), p = 0.8.
        blur_strength: Gaussian blur sigma range [0.1, 2.0] x s', p = 0.5.
        head: projection heads.
        student_temp: student softmax temperature (DINO 0.1).
        teacher_temp: teacher temperature after the warm-up (DINO 0.04-0.07).
        teacher_temp_start: teacher temperature at step 0 (DINO 0.04).
        teacher_temp_warmup_steps: linear teacher-temperature warm-up.
        objective: distillation (DINO/iBOT) or contrastive (MoCo/DenseCL).
        contrastive_temp: InfoNCE temperature (MoCo v3 0.2).
        target_norm: centering (DINO) or sinkhorn (DINOv2).
        center_momentum: EMA momentum of the DINO centre (0.9).
        sinkhorn_iters: Sinkhorn-Knopp iterations (DINOv2 3).
        cls_weight: weight of the class-token (image-level DINO) loss.
        patch_weight: weight of the dense aligned-patch loss.
        roi_k: ROI-Align grid side of the aligned-patch loss (k*k patches per view pair).
        freeze_prototypes_steps: steps during which the prototypes get no update (DINO freezes
            the last layer for the first epoch); ``steps`` or more = fixed random prototypes.
        export: which network is written as the init backbone (``masked_hog`` has no
            teacher: always the student).
        mask_ratio: ``masked_hog``: fraction of the patch tokens masked per image (MaskFeat 0.4).
        hog_cell: ``masked_hog``: HOG cell side in px (MaskFeat 8).
        hog_bins: ``masked_hog``: orientation bins over [0, pi) (MaskFeat 9).
        hog_eps: ``masked_hog``: floor of the per-patch L2 normalisation (grey levels in [0, 1]).
        visible_weight: ``masked_hog``: weight of the HOG regression on the visible patches
            (MaskFeat 0: masked patches only).
    """

    seed: int
    generator_seed: int
    num_images: int
    steps: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    momentum_start: float
    momentum_end: float
    grad_clip: float | None
    drop_path: float
    global_size: int
    local_size: int
    num_local: int
    global_scale: list[float]
    local_scale: list[float]
    jitter_strength: float
    blur_strength: float
    head: PretrainHeadConfig
    student_temp: float
    teacher_temp: float
    teacher_temp_start: float
    teacher_temp_warmup_steps: int
    objective: Objective
    contrastive_temp: float
    target_norm: TargetNorm
    center_momentum: float
    sinkhorn_iters: int
    cls_weight: float
    patch_weight: float
    roi_k: int
    freeze_prototypes_steps: int
    export: ExportNet
    mask_ratio: float
    hog_cell: int
    hog_bins: int
    hog_eps: float
    visible_weight: float
