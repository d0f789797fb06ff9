"""The top-level ``params.yaml`` sections (``runtime``, ``data``, ``crops``, ``pretrain``,
``train``, ``eval``, ``report``) as frozen dataclasses, nesting the component schemas of
:mod:`neco.config.method`, :mod:`neco.config.evals` and :mod:`neco.config.pretrain`.

Torch-free: a stage reads and checks its params in a fraction of a second. Schemas state types
only; every value, with a comment, lives in
``conf/config.yaml`` (composed into ``params.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

from neco.config.evals import ClusterConfig, HbirdConfig, LinearConfig
from neco.config.method import (
    CropConfig,
    EmaTiming,
    HeadConfig,
    LossConfig,
    Precision,
    TeacherHeadInit,
)
from neco.config.pretrain import PretrainConfig

__all__ = [
    "DataConfig",
    "DownloadConfig",
    "EvalRuntime",
    "EvalConfig",
    "FeaturesConfig",
    "ReportConfig",
    "RuntimeConfig",
    "SECTION_SCHEMAS",
    "TrainConfig",
    "TrainRuntime",
]


@dataclass(frozen=True)
class TrainConfig:
    """NeCo post-pretraining (method.md §4-§12).

    Every field is commented in ``conf/config.yaml``. The recipe fields
    (:data:`neco.models.registry.RECIPE_PARAMS`: batch, lrs, epochs, schedules, drop path,
    precision, head) are ``null`` in ``params.yaml`` to take the backbone recipe;
    :func:`neco.models.recipes.load_training` fills them before validation, so an instance is
    always complete. The train stage writes the resolution (values, origins, paper deviations)
    to ``models/neco/resolved_config.json``.
    """

    backbone: str
    weights: str | None
    weights_cache: str | None
    pos_embed_interp: str
    epochs: int
    batch_size: int
    lr_backbone: float
    lr_heads: float
    final_lr: float
    weight_decay: float
    weight_decay_end: float
    momentum_start: float
    momentum_end: float
    ema_timing: EmaTiming
    teacher_head_init: TeacherHeadInit
    drop_path: float
    trainable_blocks: list[int] | None
    grad_clip: float | None
    jitter_strength: float
    blur_strength: float
    augment_device: str  # cpu | accelerator (neco.method.tensor_augment.AugmentDevice)
    head: HeadConfig
    loss: LossConfig
    precision: Precision
    accelerator: str
    devices: int
    strategy: str
    max_steps: int | None
    num_nodes: int = 1  # machines; world size = devices x num_nodes (last: it has a default)


@dataclass(frozen=True)
class FeaturesConfig:
    """Cached val-split features shared by the linear and clustering protocols.

    Attributes:
        input_size: square input side S in pixels (448 in the paper; divisible by the patch).
    """

    input_size: int


@dataclass(frozen=True)
class EvalConfig:
    """Dense evaluation (evaluation.md).

    Attributes:
        datasets: evaluation dataset -> its prepared source, e.g. ``{coco_things: coco}``
            (a ``neco.data.registry`` dataset name and its ``source``; the mapping lets
            ``dvc.yaml`` depend on exactly ``data/prepared/<source>``).
        models: models under evaluation: ``init`` (the starting backbone) and/or ``neco``.
        checkpoint: evaluate this as ``neco`` instead of the trained student: an exported
            safetensors file, a released NeCo ``.ckpt`` file, or ``neco_release:<name>`` (a
            released NeCo model fetched from HF ``FunAILab/NeCo``,
            ``neco.models.release.RELEASES``); None = the train stage's student.
        checkpoint_key: which network of a NeCo release to take (``student`` = the
            ``*_model.ckpt`` file, or ``teacher`` = ``*_teacher.ckpt``).
        release_revision: HF revision (branch, tag or commit hash) of ``neco_release:`` files.
    """

    datasets: dict[str, str]
    models: list[str]
    checkpoint: str | None
    checkpoint_key: str
    release_revision: str
    features: FeaturesConfig
    linear: LinearConfig
    overcluster: ClusterConfig
    hbird: HbirdConfig


@dataclass(frozen=True)
class TrainRuntime:
    """Training knobs that cannot change the trained weights.

    Attributes:
        checkpoint_every_n_epochs: period of the resumable full checkpoint (resume is exact at
            epoch ends, so the period changes only how much work a crash can lose).
        log_every_n_steps: dvclive logging period of the training curves.
    """

    checkpoint_every_n_epochs: int
    log_every_n_steps: int


@dataclass(frozen=True)
class EvalRuntime:
    """Evaluation knobs that cannot change a metric (fp32 inference: at most float rounding).

    Attributes:
        features_batch_size: images per forward pass of the features cache.
        figure_examples: val images drawn in each protocol's example figure.
        hbird_batch_size: images per extractor forward of Hummingbird memory and queries.
        hbird_query_chunk: query rows per nearest-neighbour search block.
        hbird_key_chunk: key rows per block of the exact torch search.
    """

    features_batch_size: int
    figure_examples: int
    hbird_batch_size: int
    hbird_query_chunk: int
    hbird_key_chunk: int


@dataclass(frozen=True)
class DownloadConfig:
    """Network behaviour of the download stage (``runtime.download``): cannot change any file.

    Attributes:
        retries: extra rounds over all mirrors after the first one, for transient errors.
        timeout_s: socket timeout per connect/read, seconds.
        backoff_s: sleep before retry round r is ``backoff_s * 2**(r-1)`` seconds.
    """

    retries: int
    timeout_s: float
    backoff_s: float


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs that cannot change results; read by the stages but deliberately not declared in
    ``dvc.yaml``, so changing one re-runs nothing.

    Attributes:
        num_workers: DataLoader worker processes per training process; ``None`` = from the
            CPU count (:meth:`workers`; the paper preset).
        progress: show progress bars.
        train: training periods (checkpoints, logging).
        eval: inference batch sizes.
        download: retries, timeouts and backoff of every download.
    """

    num_workers: int | None
    progress: bool
    train: TrainRuntime
    eval: EvalRuntime
    download: DownloadConfig

    def workers(self, processes: int = 1) -> int:
        """Worker processes for each of ``processes`` training processes on this machine.

        ``num_workers`` when set; else the CPUs this process may use (its affinity mask, so a
        SLURM or ``taskset`` allocation counts, not the whole machine), split over the
        processes, less one per process for the training loop itself, at most 32.
        """
        if self.num_workers is not None:
            return self.num_workers
        import os

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        return max(0, min(32, cpus // max(1, processes) - 1))


@dataclass(frozen=True)
class DataConfig:
    """Which datasets the pipeline fetches, trains on and evaluates.

    Attributes:
        sources: raw sources to fetch and prepare (``datasets.<name>`` blocks), e.g.
            ``[synthetic]`` or ``[voc, ade20k, coco]``.
        train: dataset NeCo post-pretrains on (unlabelled view), e.g. ``synthetic`` or ``coco``.
    """

    sources: list[str]
    train: str


@dataclass(frozen=True)
class ReportConfig:
    """``report`` section of ``params.yaml``: the paper's evaluation setting per protocol.

    evaluation.md §8 lists the settings most likely behind the paper numbers. Each entry is
    ``"<settings key>=<value>[|<value>...]"``: the key is a dotted path into a result's
    ``settings`` dict, the values are the accepted paper values (numbers compare numerically,
    other values case-insensitively). A result whose settings differ, or that lacks a listed
    key, is flagged in ``tables.md``. (Flat list fields: OmegaConf 2.3 makes lists inside a
    nested frozen dataclass read-only, so they cannot be merged from YAML.)

    Attributes:
        paper_settings_linear: e.g. ``["input_size=448", "eval_mask_size=100"]``.
        paper_settings_overcluster: e.g. ``["pca_dim=50"]``.
        paper_settings_hbird: e.g. ``["input_size=504|512", "nn=scann"]``.
    """

    paper_settings_linear: list[str]
    paper_settings_overcluster: list[str]
    paper_settings_hbird: list[str]


SECTION_SCHEMAS: dict[str, type] = {
    "runtime": RuntimeConfig,
    "data": DataConfig,
    "crops": CropConfig,
    "pretrain": PretrainConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "report": ReportConfig,
}
