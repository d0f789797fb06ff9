"""Self-supervised pretraining of backbones that have no published weights (the demo ViT).

NeCo post-pretrains a backbone whose patch neighbours already mean something; the paper's inits
are self-supervised (DINO, DINOv2, iBOT, ...). This package makes such an init for registry
backbones without official weights (today only ``vit_tiny_demo``), label-free, on images
disjoint from the NeCo training and evaluation splits (a synthetic split from another generator
seed).

The objective is DINO-style self-distillation with multi-crop (Caron et al. 2021,
https://arxiv.org/abs/2104.14294) on the class token, plus a dense term in the spirit of iBOT's
patch distillation (Zhou et al. 2022, https://arxiv.org/abs/2111.07832) where the student's patch
tokens predict the teacher's on the ROI-aligned overlap of two views, as NeCo aligns them.
Teacher targets are centred and sharpened (DINO) or Sinkhorn-Knopp normalised (SwAV, DINOv2).
A MoCo-style InfoNCE variant of both terms (``Objective.CONTRASTIVE``) and MaskFeat's masked
HOG regression (``Objective.MASKED_HOG``, Wei et al. 2022, https://arxiv.org/abs/2112.09133:
no teacher, cannot collapse) are the alternatives; on the demo data the DINO-style objective
collapses to uniform targets within the CPU budget, the other two learn (issue 14 study).

Read in order:

* ``neco.config.pretrain``: the typed ``pretrain`` section (values in ``conf/config.yaml``);
* ``images.py``: the pretraining images, rendered in memory from the synthetic generator;
* ``views.py``: batched multi-crop geometry (``neco.method.crops``) and tensor augmentation;
* ``dino_head.py``: the projection head with weight-normalised prototypes;
* ``dino_loss.py``: pure functions: centring, Sinkhorn-Knopp, the distillation cross-entropy;
* ``maskfeat.py``: HOG targets, token masking, the masked-HOG head and loss;
* ``run.py``: :func:`run_pretraining`, the training loop, the backbone export and the curve;
* ``diagnostics.py``: the cross-view neighbour-consistency diagnostic of the issue-14 study
  (for aligned patches of two views, the overlap of their top-k reference neighbours).

The ``pretrain`` stage (``stages/pretrain.py``) runs it for the demo; ``bench/demo_study.py``
drives it for the study (``reports/demo_study.md``).

Imports: ``neco.config`` (errors), ``neco.data.sources`` (the generator), ``neco.method``
(crops, ROI-Align, augmentation constants, schedules), ``neco.models`` (backbone, export) and
``neco.io``; nothing from ``neco.train`` or ``neco.evals``, and no paths are known here.
"""

from neco.config.pretrain import PretrainConfig, TargetNorm
from neco.pretrain.run import run_pretraining

__all__ = ["PretrainConfig", "TargetNorm", "run_pretraining"]
