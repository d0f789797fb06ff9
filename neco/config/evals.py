"""Schemas of the evaluation protocols (``eval.*`` sections, evaluation.md).

Types only, no torch or faiss: every value, with a comment, lives in
``conf/config.yaml`` (composed into ``params.yaml``). The protocols
(``neco.evals.*``) import their configs and enums from here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MeanOver(enum.Enum):
    """Class set of the mIoU mean when the ignore label is itself an output class (ADE20K, ι = 0).

    ``all_classes`` averages over all C classes (reference: 151 for ADE20K, IoU_0 ≡ 0);
    ``without_ignored_class`` drops the ignored class (150). Identical when ι is not a class id.
    """

    all_classes = "all_classes"
    without_ignored_class = "without_ignored_class"


class Matching(enum.Enum):
    """Rule mapping predicted ids (classes or clusters) to GT classes (evaluation.md §1.5, 2)."""

    identity = "identity"
    hungarian = "hungarian"
    many_to_one_precision = "many_to_one_precision"


@dataclass(frozen=True)
class MetricConfig:
    """Metric quirks shared by all protocols (evaluation.md §7).

    Attributes:
        ade20k_mean_over: class set of the primary mean when ι is a class id (ADE20K 151 | 150).
    """

    ade20k_mean_over: MeanOver


class ImageStd(enum.Enum):
    """Normalisation std: ``correct`` (0.225 blue) or Hummingbird's ``reference_typo`` (0.255)."""

    correct = "correct"
    reference_typo = "reference_typo"


class MaskResize(enum.Enum):
    """torch nearest variants for label maps."""

    nearest = "nearest"
    nearest_exact = "nearest-exact"


@dataclass(frozen=True)
class JitterConfig:
    """Hummingbird colour jitter: four independent ``RandomApply(ColorJitter(x), p)``.

    Attributes:
        brightness: jitter strength, factor ~ U[1 − b, 1 + b] (reference 0.1).
        contrast: factor ~ U[1 − c, 1 + c] (reference 0.1).
        saturation: factor ~ U[1 − s, 1 + s] (reference 0.1).
        hue: shift ~ U[−h, h] (reference 0.1; HB-1.1 0.5).
        p: probability of applying each of the four (reference 0.5).
    """

    brightness: float
    contrast: float
    saturation: float
    hue: float
    p: float


class NnBackend(enum.Enum):
    """Nearest-neighbour backend of Hummingbird (``hbird.nn``)."""

    exact = "exact"
    faiss_ivf = "faiss_ivf"
    faiss_hnsw = "faiss_hnsw"


@dataclass(frozen=True)
class AnnConfig:
    """Approximate-search parameters (project starting values, not reference).

    Attributes:
        ivf_nlist: IVF coarse cells (≈ 16,384 for 10M keys).
        ivf_nprobe: IVF cells visited per query (64).
        hnsw_m: HNSW graph degree (32).
        hnsw_ef_construction: HNSW build beam (200).
        hnsw_ef_search: HNSW search beam (128).
    """

    ivf_nlist: int
    ivf_nprobe: int
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int


class MemoryIgnore(enum.Enum):
    """Memory handling of ι pixels: ``to_class0`` (reference quirk) or ``drop``."""

    to_class0 = "to_class0"
    drop = "drop"


class LabelStorage(enum.Enum):
    """Memory label rows: ``float32`` soft labels or exact per-class pixel ``counts_int16``."""

    float32 = "float32"
    counts_int16 = "counts_int16"


class Autocast(enum.Enum):
    """Extractor precision: ``fp16_on_cuda`` (Hummingbird reference quirk) or ``none`` (fp32)."""

    fp16_on_cuda = "fp16_on_cuda"
    none = "none"


class ModelSelection(enum.Enum):
    """Headline epoch: ``best_val`` (reference: best val mIoU) or ``last``."""

    best_val = "best_val"
    last = "last"


class TrainShuffle(enum.Enum):
    """Train order: ``shuffle`` (seeded per epoch) or ``reference`` (dataset order every epoch)."""

    shuffle = "shuffle"
    reference = "reference"


class UpsampleOrder(enum.Enum):
    """Bilinear upsampling of ``features`` before the 1×1 conv (reference) or ``logits`` after."""

    features = "features"
    logits = "logits"


@dataclass(frozen=True)
class LinearConfig:
    """Linear probe settings (evaluation.md §2, §7). Types only; values live in ``params.yaml``.

    Attributes:
        input_size: network input side S (448).
        mask_size: train label / loss resolution (100).
        eval_mask_size: val label resolution (100; 448 = S-evaluation).
        epochs: training epochs (25).
        batch_size: images per step and per val batch (128).
        lr: SGD learning rate (0.01).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay, also on the bias (1e-4).
        step_size: StepLR period in epochs (20).
        gamma: StepLR factor (0.1).
        crop_scale: RandomResizedCrop area range ([0.8, 1.0]).
        crop_ratio: RandomResizedCrop aspect range ([0.75, 1.3333]).
        flip_p: horizontal flip probability (0.5).
        model_selection: headline epoch (best_val).
        train_shuffle: train order (project: shuffle; reference VOC/ADE: dataset order).
        train_drop_last: drop the last incomplete train batch (reference VOC/COCO: true).
        upsample_order: features (reference) or logits (cheaper, ≈ equal).
        full_val: score every val image (project); false = reference ``drop_last`` truncation to
            whole ``batch_size`` batches (VOC: 1,408 of 1,449).
        metric: shared metric quirks.
    """

    input_size: int
    mask_size: int
    eval_mask_size: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    step_size: int
    gamma: float
    crop_scale: list[float]
    crop_ratio: list[float]
    flip_p: float
    model_selection: ModelSelection
    train_shuffle: TrainShuffle
    train_drop_last: bool
    upsample_order: UpsampleOrder
    full_val: bool
    metric: MetricConfig


class KmeansBackend(enum.Enum):
    """k-means implementation; faiss-cpu is the reference (others give different numbers)."""

    faiss = "faiss"


@dataclass(frozen=True)
class ClusterConfig:
    """Clustering settings (evaluation.md §3.4, §7). Types only; values live in ``params.yaml``.

    Attributes:
        input_size: network input side S of the cached val tokens (448).
        mask_size: label resolution m (100).
        pca_dim: PCA output dimensions (50); capped at min(pca_dim, D, N points).
        pca_max_points_per_d: faiss PCA training subsample, points per input dim (1000 = faiss
            default = reference; null = all points).
        include_gt: run K = C (number of classes) with Hungarian matching.
        ks: further K values (paper: 300, 500; project adds 100); K > C uses many-to-one.
        seeds: k-means seeds (0-4); mean and std (ddof 1) are over them.
        niter: k-means iterations (100).
        nredo: k-means restarts, lowest objective kept (5).
        max_points_per_centroid: faiss k-means training subsample per centroid (256 = faiss default
            = reference; null = all points).
        backend: k-means implementation (faiss).
        full_val: score every val image (project); false = reference ``drop_last`` truncation.
        drop_last_batch_size: batch size of that truncation (reference 32: VOC 1,440 of 1,449).
        metric: shared metric quirks.
    """

    input_size: int
    mask_size: int
    pca_dim: int
    pca_max_points_per_d: int | None
    include_gt: bool
    ks: list[int]
    seeds: list[int]
    niter: int
    nredo: int
    max_points_per_centroid: int | None
    backend: KmeansBackend
    full_val: bool
    drop_last_batch_size: int
    metric: MetricConfig


@dataclass(frozen=True)
class HbirdConfig:
    """Hummingbird settings (evaluation.md §4.5-§4.7, §7). Types only; values in ``params.yaml``.

    Attributes:
        input_size: S (504 for /14, 512 for /16). ``null`` in ``params.yaml`` (the paper preset)
            = the paper's side for the backbone's patch size, filled before validation by
            ``neco.models.recipes.load_eval``.
        memory_size: M key rows (10,240,000); null = store every patch.
        augmentation_epochs: E (2).
        k: neighbours (30).
        temperature: softmax τ (0.02).
        jitter: colour jitter b/c/s/h and p (0.1 each, p 0.5).
        crop_scale: memory RandomResizedCrop scale ([0.5, 2.0]).
        crop_ratio: memory RandomResizedCrop ratio ([0.75, 1.3333]).
        image_std: correct (project) or reference_typo (0.255).
        memory_ignore: to_class0 (reference) or drop.
        matching: primary mIoU mapping, hungarian (reference) or identity; both are stored.
        nn: exact (project) or faiss_ivf / faiss_hnsw (recall reported).
        ann: approximate-search parameters.
        recall_samples: query patches sampled for recall@k of approximate search (10,000).
        autocast: fp16_on_cuda (reference) or none.
        fractions: memory fractions, e.g. ["1/1", "1/8", "1/64", "1/128"].
        subset_seeds: subset / run seeds ([42, 400, 783, 1293, 4019]).
        full_repeats: runs at 1/1, using the first seeds (1).
        label_storage: float32 soft labels or exact int16 pixel counts (same numbers).
        metric: shared metric quirks.
    """

    input_size: int
    memory_size: int | None
    augmentation_epochs: int
    k: int
    temperature: float
    jitter: JitterConfig
    crop_scale: list[float]
    crop_ratio: list[float]
    image_std: ImageStd
    memory_ignore: MemoryIgnore
    matching: Matching
    nn: NnBackend
    ann: AnnConfig
    recall_samples: int
    autocast: Autocast
    fractions: list[str]
    subset_seeds: list[int]
    full_repeats: int
    label_storage: LabelStorage
    metric: MetricConfig
