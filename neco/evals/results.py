"""Typed results of the eval protocols (evaluation.md §1.7, §2.6, §3.5, §4.8).

Each result is a frozen dataclass; ``to_dict()`` returns the JSON-serialisable record the eval
stage writes (Python floats, mIoU as fractions in [0, 1], confusions as nested int lists).
In-memory extras are not serialised: ``examples`` (images and label maps for figures) and the
linear head weights.
"""

from __future__ import annotations

import dataclasses
import enum
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Example:
    """One val image kept for figures.

    Attributes:
        id: sample id.
        image: the resized network input, uint8 ``(S, S, 3)``.
        gt: GT at eval resolution, uint8 ``(m, m)`` (ignore index kept).
        preds: named label maps at eval resolution, e.g. ``pred`` or ``clusters_k28``.
    """

    id: str
    image: np.ndarray
    gt: np.ndarray
    preds: Mapping[str, np.ndarray]


def settings_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-able dict (enums -> values, tuples -> lists)."""

    def conv(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    out = conv(cfg)
    if not isinstance(out, dict):
        raise TypeError(f"settings_dict: expected a dataclass, got {type(cfg).__name__}")
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof 1; None for a single value)."""
    mean = float(statistics.fmean(values))
    return mean, (float(statistics.stdev(values)) if len(values) > 1 else None)


def _floats(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _matrix(m: np.ndarray) -> list[list[int]]:
    return [[int(x) for x in row] for row in np.asarray(m)]


@dataclass(frozen=True)
class EpochRecord:
    """One linear-probe epoch: mean train loss and val mIoU (identity mapping)."""

    epoch: int
    train_loss: float
    val_miou: float


@dataclass(frozen=True)
class LinearResult:
    """Linear segmentation result (evaluation.md §2.6). ``miou`` follows ``model_selection``."""

    miou: float
    miou_best_val: float
    miou_last: float
    best_epoch: int
    iou_per_class: tuple[float, ...]
    variants: dict[str, float]
    confusion: np.ndarray
    mapping: tuple[int, ...]
    curve: tuple[EpochRecord, ...]
    eval_mask_size: int
    class_names: tuple[str, ...]
    settings: dict[str, Any]
    fingerprint: str
    seed: int
    n_images: int
    n_pixels: int
    runtime_s: float
    device: str
    head_best_val: dict[str, torch.Tensor] = field(repr=False)
    head_last: dict[str, torch.Tensor] = field(repr=False)
    examples: tuple[Example, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (no head weights, no examples)."""
        return {
            "protocol": "linear",
            "miou": float(self.miou),
            "miou_best_val": float(self.miou_best_val),
            "miou_last": float(self.miou_last),
            "best_epoch": int(self.best_epoch),
            "iou_per_class": _floats(self.iou_per_class),
            "class_names": list(self.class_names),
            "variants": {k: float(v) for k, v in self.variants.items()},
            "confusion": _matrix(self.confusion),
            "mapping": list(self.mapping),
            "curve": [dataclasses.asdict(r) for r in self.curve],
            "eval_mask_size": int(self.eval_mask_size),
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "seed": int(self.seed),
            "n_images": int(self.n_images),
            "n_pixels": int(self.n_pixels),
            "runtime_s": float(self.runtime_s),
            "device": self.device,
        }


@dataclass(frozen=True)
class ClusterKResult:
    """All seeds of one K (evaluation.md §3.5)."""

    k_requested: int
    k_used: int
    capped: bool
    under_clustering: bool
    matching: str
    seeds: tuple[int, ...]
    miou_per_seed: tuple[float, ...]
    mean: float
    std: float | None
    objective_per_seed: tuple[float, ...]
    iou_per_class_mean: tuple[float, ...]
    variants: dict[str, float]
    n_kmeans_train_points: int
    confusion_per_seed: tuple[np.ndarray, ...] = field(repr=False)
    mapping_per_seed: tuple[tuple[int, ...], ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record of this K."""
        return {
            "k_requested": int(self.k_requested),
            "k_used": int(self.k_used),
            "capped": bool(self.capped),
            "under_clustering": bool(self.under_clustering),
            "matching": self.matching,
            "seeds": [int(s) for s in self.seeds],
            "miou_per_seed": _floats(self.miou_per_seed),
            "mean": float(self.mean),
            "std": None if self.std is None else float(self.std),
            "objective_per_seed": _floats(self.objective_per_seed),
            "iou_per_class_mean": _floats(self.iou_per_class_mean),
            "variants": {k: float(v) for k, v in self.variants.items()},
            "confusion_per_seed": [_matrix(c) for c in self.confusion_per_seed],
            "mapping_per_seed": [list(m) for m in self.mapping_per_seed],
            "n_kmeans_train_points": int(self.n_kmeans_train_points),
        }


@dataclass(frozen=True)
class ClusterResult:
    """Clustering / overclustering result; common fields describe the K = C run (mean over seeds;
    ``confusion`` and ``mapping`` of the first seed). ``miou`` is None without a K = C run."""

    miou: float | None
    iou_per_class: tuple[float, ...]
    variants: dict[str, float]
    confusion: np.ndarray | None
    mapping: tuple[int, ...]
    results: tuple[ClusterKResult, ...]
    pca_dim_used: int
    n_pca_train_points: int
    class_names: tuple[str, ...]
    settings: dict[str, Any]
    fingerprint: str
    seed: tuple[int, ...]
    n_points: int
    n_images: int
    n_pixels: int
    runtime_s: float
    device: str
    examples: tuple[Example, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (no examples)."""
        return {
            "protocol": "overcluster",
            "miou": None if self.miou is None else float(self.miou),
            "iou_per_class": _floats(self.iou_per_class),
            "class_names": list(self.class_names),
            "variants": {k: float(v) for k, v in self.variants.items()},
            "confusion": None if self.confusion is None else _matrix(self.confusion),
            "mapping": list(self.mapping),
            "results": [r.to_dict() for r in self.results],
            "pca_dim_used": int(self.pca_dim_used),
            "n_pca_train_points": int(self.n_pca_train_points),
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "seed": [int(s) for s in self.seed],
            "n_points": int(self.n_points),
            "n_images": int(self.n_images),
            "n_pixels": int(self.n_pixels),
            "runtime_s": float(self.runtime_s),
            "device": self.device,
        }


@dataclass(frozen=True)
class HbirdRun:
    """One Hummingbird run: one memory subset and seed (evaluation.md §4.8)."""

    fraction: str
    subset_seed: int
    miou: float
    variants: dict[str, float]
    iou_per_class: tuple[float, ...]
    confusion: np.ndarray
    mapping: tuple[int, ...]
    memory_rows: int
    per_view_k: int | str
    n_memory_images: int
    derived_subset: bool
    recall_at_k: float | None
    n_pixels: int
    timings_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record of this run."""
        return {
            "fraction": self.fraction,
            "subset_seed": int(self.subset_seed),
            "miou": float(self.miou),
            "variants": {k: float(v) for k, v in self.variants.items()},
            "iou_per_class": _floats(self.iou_per_class),
            "confusion": _matrix(self.confusion),
            "mapping": list(self.mapping),
            "memory_rows": int(self.memory_rows),
            "per_view_k": self.per_view_k,
            "n_memory_images": int(self.n_memory_images),
            "derived_subset": bool(self.derived_subset),
            "recall_at_k": None if self.recall_at_k is None else float(self.recall_at_k),
            "n_pixels": int(self.n_pixels),
            "timings_s": {k: float(v) for k, v in self.timings_s.items()},
        }


@dataclass(frozen=True)
class HbirdFraction:
    """All runs of one memory fraction with their mean and std (ddof 1)."""

    fraction: str
    mean: float
    std: float | None
    runs: tuple[HbirdRun, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record of this fraction."""
        return {
            "fraction": self.fraction,
            "mean": float(self.mean),
            "std": None if self.std is None else float(self.std),
            "runs": [r.to_dict() for r in self.runs],
        }


@dataclass(frozen=True)
class HbirdResult:
    """Hummingbird sweep result; ``miou`` is the mean at fraction 1/1 (None if not run)."""

    miou: float | None
    results: tuple[HbirdFraction, ...]
    class_names: tuple[str, ...]
    settings: dict[str, Any]
    fingerprint: str
    nn_backend: str
    recall_at_k: float | None
    seed: int
    n_images: int
    runtime_s: float
    device: str
    examples: tuple[Example, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (no examples)."""
        return {
            "protocol": "hbird",
            "miou": None if self.miou is None else float(self.miou),
            "results": [r.to_dict() for r in self.results],
            "class_names": list(self.class_names),
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "nn_backend": self.nn_backend,
            "recall_at_k": None if self.recall_at_k is None else float(self.recall_at_k),
            "seed": int(self.seed),
            "n_images": int(self.n_images),
            "runtime_s": float(self.runtime_s),
            "device": self.device,
        }


TIMING_KEYS: frozenset[str] = frozenset({"runtime_s", "timings_s"})


def split_timings(record: Any) -> tuple[Any, Any]:
    """``(result, timings)``: a ``to_dict()`` tree without its wall-time fields, and those fields.

    The metrics files are versioned results and must depend on params and inputs only (a rerun
    gives the same bytes, so ``dvc.lock`` and ``dvc metrics diff`` stay quiet); wall times go to
    a separate, untracked timings file with the same nesting.
    """
    if isinstance(record, Mapping):
        kept: dict[str, Any] = {}
        timed: dict[str, Any] = {}
        for key, value in record.items():
            if key in TIMING_KEYS:
                timed[key] = value
                continue
            sub, sub_t = split_timings(value)
            kept[key] = sub
            if sub_t:
                timed[key] = sub_t
        return kept, timed
    if isinstance(record, list):
        pairs = [split_timings(v) for v in record]
        timed_list = [t for _, t in pairs]
        return [v for v, _ in pairs], (timed_list if any(timed_list) else None)
    return record, None
