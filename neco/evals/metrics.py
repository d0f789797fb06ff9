"""Dataset-level segmentation metrics: confusion, label mappings, per-class IoU and mIoU.

Implements evaluation.md §1.5. One int64 confusion ``N[g, q]`` is accumulated over every evaluated
pixel of a split (ignored pixels removed *before* ``bincount``); a mapping ``m: pred -> class``
turns it into a ``(C, C)`` confusion from which IoU and mIoU follow. All mapping rules and class
sets ("variants") are derived from the same confusion, so storing it makes every variant cheap.

Reference semantics: NeCo ``experiments/utils.py:PredsmIoU`` and open-hummingbird-eval
``hbird/utils/eval_metrics.py`` (facts only; this is a re-implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from neco.config.evals import Matching, MeanOver


@dataclass(frozen=True)
class Score:
    """A confusion scored under one mapping rule.

    Attributes:
        miou: mean IoU over the class set chosen by ``mean_over``, a fraction in [0, 1].
        iou_per_class: IoU of every class, length C (0/0 := 0).
        mapping: ``m(q)`` for every predicted id q, length Q.
        matching: the mapping rule.
        mean_classes: the class ids the mean runs over.
        variants: mIoU under every class-set variant of this mapping, e.g. ``mean151``/``mean150``.
    """

    miou: float
    iou_per_class: tuple[float, ...]
    mapping: tuple[int, ...]
    matching: Matching
    mean_classes: tuple[int, ...]
    variants: dict[str, float]


def confusion_matrix(
    gt: torch.Tensor, pred: torch.Tensor, *, num_classes: int, num_pred: int, ignore_index: int
) -> torch.Tensor:
    """Confusion of one batch: ``N[g, q]`` = number of pixels with GT g predicted as q.

    Pixels with ``gt == ignore_index`` are removed before any index arithmetic, so the result is
    exact in int64 for any split size. Sum the results of all batches for the dataset metric.

    Args:
        gt: GT class ids, any integer dtype, shape ``(...)``.
        pred: predicted ids (classes or clusters), same shape as ``gt``.
        num_classes: C, the number of GT classes (rows).
        num_pred: Q, the number of predicted ids (columns).
        ignore_index: ι, GT value that is not evaluated.

    Returns:
        int64 ``(C, Q)`` on the device of ``gt``.

    Raises:
        ValueError: on a shape mismatch or an id outside ``[0, C)`` / ``[0, Q)``.
    """
    if gt.shape != pred.shape:
        raise ValueError(
            f"confusion_matrix: gt shape {tuple(gt.shape)} != pred {tuple(pred.shape)}"
        )
    keep = gt != ignore_index
    g = gt[keep].long()
    q = pred.to(gt.device)[keep].long()
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_classes):
        raise ValueError(
            f"confusion_matrix: GT ids must be in [0, {num_classes}) or the ignore index "
            f"{ignore_index}; got range [{int(g.min())}, {int(g.max())}]"
        )
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= num_pred):
        raise ValueError(
            f"confusion_matrix: predicted ids must be in [0, {num_pred}); "
            f"got range [{int(q.min())}, {int(q.max())}]"
        )
    flat = torch.bincount(g * num_pred + q, minlength=num_classes * num_pred)
    return flat.reshape(num_classes, num_pred)


def iou_matrix(confusion: np.ndarray) -> np.ndarray:
    """``IoU[g, q] = N[g,q] / (Σ_q' N[g,q'] + Σ_g' N[g',q] − N[g,q])`` with 0/0 := 0.

    Args:
        confusion: int ``(C, Q)``.

    Returns:
        float64 ``(C, Q)``.
    """
    n = np.asarray(confusion, dtype=np.float64)
    union = n.sum(axis=1, keepdims=True) + n.sum(axis=0, keepdims=True) - n
    out: np.ndarray = np.divide(n, union, out=np.zeros_like(n), where=union > 0)
    return out


def hungarian_mapping(confusion: np.ndarray) -> np.ndarray:
    """One-to-one mapping maximising total IoU (``linear_sum_assignment`` on ``1 − IoU``).

    Unmatched predicted ids (only when Q > C) map to class 0.

    Args:
        confusion: int ``(C, Q)``.

    Returns:
        int64 ``(Q,)``: the class of every predicted id.
    """
    rows, cols = linear_sum_assignment(1.0 - iou_matrix(confusion))
    mapping = np.zeros(confusion.shape[1], dtype=np.int64)
    mapping[cols] = rows
    return mapping


def many_to_one_precision_mapping(confusion: np.ndarray) -> np.ndarray:
    """Each predicted id maps to its majority GT class (precision argmax).

    ``argmax`` returns the lowest class on ties; an id with no evaluated pixel maps to 0.

    Args:
        confusion: int ``(C, Q)``.

    Returns:
        int64 ``(Q,)``.
    """
    out: np.ndarray = np.asarray(confusion).argmax(axis=0).astype(np.int64)
    return out


def mapping_for(confusion: np.ndarray, matching: Matching) -> np.ndarray:
    """The mapping ``m(q)`` of rule ``matching`` for a ``(C, Q)`` confusion, int64 ``(Q,)``.

    Raises:
        ValueError: ``identity`` with Q != C.
    """
    num_classes, num_pred = confusion.shape
    if matching is Matching.identity:
        if num_pred != num_classes:
            raise ValueError(f"identity matching needs Q == C, got Q={num_pred}, C={num_classes}")
        return np.arange(num_classes, dtype=np.int64)
    if matching is Matching.hungarian:
        return hungarian_mapping(confusion)
    if matching is Matching.many_to_one_precision:
        return many_to_one_precision_mapping(confusion)
    raise ValueError(f"unknown matching {matching!r}")


def map_confusion(confusion: np.ndarray, mapping: np.ndarray, num_classes: int) -> np.ndarray:
    """``N'[g, c] = Σ_{q: m(q) = c} N[g, q]``, int64 ``(C, C)``."""
    n = np.asarray(confusion, dtype=np.int64)
    mapped = np.zeros((n.shape[0], num_classes), dtype=np.int64)
    np.add.at(mapped.T, np.asarray(mapping, dtype=np.int64), n.T)
    return mapped


def per_class_iou(confusion_cc: np.ndarray) -> np.ndarray:
    """``IoU_c = TP / (TP + FP + FN)`` of a square confusion, 0/0 := 0, float64 ``(C,)``."""
    return np.diag(iou_matrix(confusion_cc)).copy()


def mean_class_ids(num_classes: int, ignore_index: int, mean_over: MeanOver) -> tuple[int, ...]:
    """The class ids the mIoU averages over (evaluation.md §1.5 step 4)."""
    ids = range(num_classes)
    if mean_over is MeanOver.without_ignored_class and 0 <= ignore_index < num_classes:
        return tuple(c for c in ids if c != ignore_index)
    return tuple(ids)


def score_confusion(
    confusion: np.ndarray | torch.Tensor,
    *,
    matching: Matching,
    ignore_index: int,
    mean_over: MeanOver,
) -> Score:
    """Map, compute per-class IoU and the mIoU of a dataset-level confusion.

    Args:
        confusion: int ``(C, Q)`` from summed :func:`confusion_matrix` calls.
        matching: the mapping rule.
        ignore_index: ι; decides whether the two class-set variants differ.
        mean_over: class set of the primary mean.

    Returns:
        The :class:`Score`; ``variants`` holds ``mean{C}`` and ``mean{C-1}`` when ι is a class id.
    """
    n = confusion.cpu().numpy() if isinstance(confusion, torch.Tensor) else np.asarray(confusion)
    num_classes = n.shape[0]
    mapping = mapping_for(n, matching)
    iou = per_class_iou(map_confusion(n, mapping, num_classes))
    variants: dict[str, float] = {}
    if 0 <= ignore_index < num_classes:
        for over in MeanOver:
            ids = mean_class_ids(num_classes, ignore_index, over)
            variants[f"mean{len(ids)}"] = float(iou[list(ids)].mean())
    classes = mean_class_ids(num_classes, ignore_index, mean_over)
    return Score(
        miou=float(iou[list(classes)].mean()),
        iou_per_class=tuple(float(v) for v in iou),
        mapping=tuple(int(v) for v in mapping),
        matching=matching,
        mean_classes=classes,
        variants=variants,
    )
