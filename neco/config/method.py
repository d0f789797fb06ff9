"""Schemas of the training method (``crops`` and ``train.*`` component sections, method.md).

Types only, no torch: every value, with a comment, lives in
``conf/config.yaml`` (composed into ``params.yaml``). The components that
these configure (``neco.method.*``) import them from here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadConfig:
    """Projection head (method.md §4).

    Attributes:
        hidden_dim: hidden width (official 2048).
        out_dim: projection dimension d (official 256).
        n_layers: number of Linear layers (official 3).
    """

    hidden_dim: int
    out_dim: int
    n_layers: int


class EmaTiming(str, enum.Enum):
    """When the EMA teacher update runs relative to the optimizer step (method.md §10)."""

    BEFORE_STEP = "before_step"
    AFTER_STEP = "after_step"


class TeacherHeadInit(str, enum.Enum):
    """How the teacher projection head is initialised (method.md §4, §16 #9)."""

    INDEPENDENT = "independent"
    COPY = "copy"


class Precision(str, enum.Enum):
    """Lightning precision of the backbone; the similarity and sort always stay fp32 (D3)."""

    FP32 = "32"
    BF16_MIXED = "bf16-mixed"


@dataclass(frozen=True)
class CropConfig:
    """Multi-crop geometry (``crops`` section of ``params.yaml``; method.md §2).

    Attributes:
        num_global: global crops (official 2); views 0..num_global-1.
        num_local: local crops (official 4).
        global_scale: area fraction range of global crops (official [0.25, 1.0]).
        local_scale: area fraction range of local crops (official [0.05, 0.25]).
        ratio: aspect ratio (w / h) range, sampled log-uniformly (official [3/4, 4/3]).
        min_intersection: a view must overlap every earlier global crop by more than this
            fraction of the image area (official 0.01).
        second_global_factor: threshold multiplier for a global crop against an earlier global
            (official 2: 0.02 for the 2nd global vs the 1st).
        max_retries: redraws allowed per view before sampling fails (project cap).
        global_size: output side of global crops in pixels (518 for p14 DINOv2, 224 for p16).
        local_size: output side of local crops in pixels (98).

    ``num_global``, ``num_local``, ``global_size`` and ``local_size`` are recipe fields: ``null``
    in ``params.yaml`` takes the backbone recipe, filled in before validation
    (:func:`neco.models.recipes.load_training`), so an instance is always complete.
    """

    num_global: int
    num_local: int
    global_scale: list[float]
    local_scale: list[float]
    ratio: list[float]
    min_intersection: float
    second_global_factor: float
    max_retries: int
    global_size: int
    local_size: int


class SortNetwork(str, enum.Enum):
    """Sorting network type (method.md §8; official and default: bitonic)."""

    BITONIC = "bitonic"
    ODD_EVEN = "odd_even"


class SortDistribution(str, enum.Enum):
    """Comparator relaxation ``F`` (method.md §8 table; official and default: cauchy)."""

    CAUCHY = "cauchy"
    LOGISTIC = "logistic"
    LOGISTIC_PHI = "logistic_phi"
    RECIPROCAL = "reciprocal"
    GAUSSIAN = "gaussian"
    OPTIMAL = "optimal"


class Similarity(str, enum.Enum):
    """What the sort ranks (method.md §7)."""

    COSINE = "cosine"  # official (every released config)
    EUCLIDEAN = "euclidean"  # cdist on un-normalised aligned features


class LossImplementation(str, enum.Enum):
    """How the sort + cross-entropy of the loss run (method.md §14.3; same numbers, D4)."""

    EXACT = "exact"  # reference: batched exact soft sort, P and Q of all queries materialised
    FUSED = "fused"  # per-query fused kernel (C on CPU, Triton on CUDA), O(R n) memory


@dataclass(frozen=True)
class LossConfig:
    """``train.loss`` section (method.md §15; every value commented in ``conf/config.yaml``).

    ``roi_k``, ``n_refs``, ``steepness_*`` and ``queue*`` are recipe fields (``null`` in
    ``params.yaml`` = the backbone recipe, filled before validation).

    Attributes:
        roi_k: ROI-Align output side k; M = k*k queries per pair and image (official 7).
        n_refs: references per image n (official 49 = k*k).
        similarity: cosine (official) or euclidean.
        sort_network: bitonic (official) or odd_even.
        sort_distribution: comparator relaxation (official cauchy).
        art_lambda: exponent of logistic_phi only (official 0.25).
        steepness_student: student sort steepness beta_s (official 100).
        steepness_teacher: teacher sort steepness beta_t (official 100); None (only when
            built in code) = same as the student.
        log_eps: 0 = plain log P (official); > 0 = log(max(P, log_eps)).
        queue: references from the FIFO queue (DINOv2 recipes) instead of the batch.
        queue_length: slots per queue bank (official 8192).
        queue_push_per_image: teacher patches pushed per image and step (official 10).
        crops_for_assign: teacher (global) crop indices (official [0, 1]).
        use_teacher: targets from the EMA teacher (official true); false = the ablation: targets
            from a second student forward of the global crops (official handling).
        implementation: ``exact`` (the reference sort, :mod:`neco.method.sorting`) or ``fused``
            (:mod:`neco.method.fused_loss`); both give the same loss and gradients to rounding.
    """

    roi_k: int
    n_refs: int
    similarity: Similarity
    sort_network: SortNetwork
    sort_distribution: SortDistribution
    art_lambda: float
    steepness_student: float
    steepness_teacher: float | None
    log_eps: float
    queue: bool
    queue_length: int
    queue_push_per_image: int
    crops_for_assign: list[int]
    use_teacher: bool
    implementation: LossImplementation
