"""Metrics: confusion with ignore, mappings, IoU / mIoU and variants (evaluation.md §1.5)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from neco.config.evals import Matching, MeanOver
from neco.evals.metrics import (
    confusion_matrix,
    hungarian_mapping,
    iou_matrix,
    many_to_one_precision_mapping,
    map_confusion,
    mean_class_ids,
    per_class_iou,
    score_confusion,
)


def test_confusion_hand_computed_ignore_removed_before_bincount() -> None:
    gt = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 1, 3], [1, 2, 0, 0]])
    conf = confusion_matrix(gt, pred, num_classes=3, num_pred=4, ignore_index=255)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0]])
    assert conf.dtype == torch.int64
    assert torch.equal(conf, expected)
    assert int(conf.sum()) == 6  # the two 255 pixels are not evaluated


def test_confusion_rejects_out_of_range_ids() -> None:
    gt = torch.tensor([0, 5])
    with pytest.raises(ValueError, match=r"GT ids must be in \[0, 3\)"):
        confusion_matrix(gt, torch.tensor([0, 0]), num_classes=3, num_pred=3, ignore_index=255)
    with pytest.raises(ValueError, match=r"predicted ids must be in \[0, 3\)"):
        confusion_matrix(
            torch.tensor([0, 1]), torch.tensor([0, 3]), num_classes=3, num_pred=3, ignore_index=255
        )
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(
            torch.zeros(2, 2), torch.zeros(4), num_classes=3, num_pred=3, ignore_index=255
        )


def test_ade_style_ignore_zero_predictions_of_class_zero_count_as_errors() -> None:
    # ι = 0 is also an output class: GT 0 is dropped, a prediction 0 is a false negative.
    gt = torch.tensor([0, 1, 1, 2, 2])
    pred = torch.tensor([1, 1, 0, 2, 2])
    conf = confusion_matrix(gt, pred, num_classes=3, num_pred=3, ignore_index=0).numpy()
    assert conf.tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 2]]
    s = score_confusion(
        conf, matching=Matching.identity, ignore_index=0, mean_over=MeanOver.all_classes
    )
    assert s.iou_per_class == pytest.approx((0.0, 0.5, 1.0))
    assert s.miou == pytest.approx(1.5 / 3)  # reference: mean over all C, IoU_0 ≡ 0
    assert s.variants == pytest.approx({"mean3": 0.5, "mean2": 0.75})
    s150 = score_confusion(
        conf, matching=Matching.identity, ignore_index=0, mean_over=MeanOver.without_ignored_class
    )
    assert s150.miou == pytest.approx(0.75)
    assert mean_class_ids(3, 255, MeanOver.without_ignored_class) == (0, 1, 2)


def test_iou_hand_computed_with_class_absent_from_gt_and_prediction() -> None:
    # class 3 never occurs: IoU 0/0 := 0 and it still counts in the mean over all C classes.
    conf = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 4, 0], [0, 0, 0, 0]])
    iou = per_class_iou(conf)
    assert iou == pytest.approx([3 / 5, 2 / 3, 4 / 5, 0.0])
    s = score_confusion(
        conf, matching=Matching.identity, ignore_index=255, mean_over=MeanOver.all_classes
    )
    assert s.miou == pytest.approx((3 / 5 + 2 / 3 + 4 / 5) / 4)
    assert s.variants == {}  # ι = 255 is not a class: the class-set variants coincide
    assert iou_matrix(np.zeros((2, 2), dtype=np.int64)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_perfect_prediction_gives_one() -> None:
    gt = torch.randint(0, 5, (4, 10, 10), generator=torch.Generator().manual_seed(0))
    conf = confusion_matrix(gt, gt, num_classes=5, num_pred=5, ignore_index=255)
    assert (
        score_confusion(
            conf, matching=Matching.identity, ignore_index=255, mean_over=MeanOver.all_classes
        ).miou
        == 1.0
    )


def _brute_force_best_total_iou(conf: np.ndarray) -> float:
    """Max over injective class -> cluster assignments of the summed IoU (Q >= C)."""
    iou = iou_matrix(conf)
    c, q = iou.shape
    return max(
        sum(iou[g, cols[g]] for g in range(c)) for cols in itertools.permutations(range(q), c)
    )


def test_hungarian_matches_brute_force_on_tiny_square_matrices() -> None:
    rng = np.random.default_rng(0)
    for c in (2, 3, 4, 5):
        for _ in range(10):
            conf = rng.integers(0, 50, size=(c, c))
            mapping = hungarian_mapping(conf)
            assert sorted(mapping.tolist()) == list(range(c))  # a bijection
            iou = iou_matrix(conf)
            total = sum(iou[mapping[j], j] for j in range(c))
            assert total == pytest.approx(_brute_force_best_total_iou(conf))


def test_hungarian_unmatched_clusters_map_to_zero() -> None:
    # clusters 0..2 match classes 2, 0, 1 exactly; clusters 3 and 4 are extra (mostly class 2)
    conf = np.array(
        [
            [0, 10, 0, 0, 1],
            [0, 0, 10, 1, 0],
            [10, 0, 0, 3, 3],
        ]
    )
    assert hungarian_mapping(conf).tolist() == [2, 0, 1, 0, 0]
    rng = np.random.default_rng(5)
    for _ in range(10):  # Q > C: optimum equals brute force over injective assignments
        conf = rng.integers(0, 50, size=(3, 5))
        mapping = hungarian_mapping(conf)
        rows, cols = linear_sum_assignment(1 - iou_matrix(conf))
        assert mapping[cols].tolist() == rows.tolist()
        assert iou_matrix(conf)[rows, cols].sum() == pytest.approx(
            _brute_force_best_total_iou(conf)
        )
        others = sorted(set(range(5)) - set(cols.tolist()))
        assert mapping[others].tolist() == [0] * len(others)


def test_hungarian_agrees_with_scipy_maximise_on_random_matrices() -> None:
    rng = np.random.default_rng(1)
    for c, q in [(21, 21), (12, 12), (7, 9)]:
        conf = rng.integers(0, 1000, size=(c, q))
        iou = iou_matrix(conf)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        mapping = hungarian_mapping(conf)
        mapped = map_confusion(conf, mapping, c)
        # the matched columns' IoU sum equals scipy's optimum
        assert sum(iou[mapping[j], j] for j in cols) == pytest.approx(iou[rows, cols].sum())
        assert mapped.sum() == conf.sum()


def test_hungarian_is_invariant_to_label_permutation() -> None:
    rng = np.random.default_rng(2)
    gt = torch.from_numpy(rng.integers(0, 6, size=(3, 20, 20)))
    noisy = torch.where(
        torch.from_numpy(rng.random((3, 20, 20)) < 0.3),
        torch.from_numpy(rng.integers(0, 6, size=(3, 20, 20))),
        gt,
    )
    perm = torch.from_numpy(rng.permutation(6))
    base = confusion_matrix(gt, noisy, num_classes=6, num_pred=6, ignore_index=255)
    permuted = confusion_matrix(gt, perm[noisy], num_classes=6, num_pred=6, ignore_index=255)
    kw = dict(matching=Matching.hungarian, ignore_index=255, mean_over=MeanOver.all_classes)
    a, b = score_confusion(base, **kw), score_confusion(permuted, **kw)
    assert a.miou == pytest.approx(b.miou)
    assert a.iou_per_class == pytest.approx(b.iou_per_class)
    # a pure relabelling of a perfect prediction scores 1 under Hungarian, not under identity
    relabelled = confusion_matrix(gt, perm[gt], num_classes=6, num_pred=6, ignore_index=255)
    scores = {
        m: score_confusion(
            relabelled, matching=m, ignore_index=255, mean_over=MeanOver.all_classes
        ).miou
        for m in (Matching.hungarian, Matching.identity)
    }
    assert scores[Matching.hungarian] == 1.0
    assert scores[Matching.identity] < 1.0


def test_many_to_one_precision_majority_ties_and_empty_clusters() -> None:
    conf = np.array(
        [
            [5, 0, 2, 0, 3],
            [1, 4, 2, 0, 3],
            [0, 9, 1, 0, 0],
        ]
    )
    # cluster 0 -> 0 (majority), 1 -> 2, 2 -> tie between 0 and 1 -> lowest (0),
    # 3 -> no pixels -> 0, 4 -> tie 0/1 -> 0
    assert many_to_one_precision_mapping(conf).tolist() == [0, 2, 0, 0, 0]
    s = score_confusion(
        conf,
        matching=Matching.many_to_one_precision,
        ignore_index=255,
        mean_over=MeanOver.all_classes,
    )
    mapped = map_confusion(conf, np.array(s.mapping), 3)
    assert mapped.tolist() == [[10, 0, 0], [6, 0, 4], [1, 0, 9]]
    assert s.iou_per_class == pytest.approx((10 / 17, 0.0, 9 / 14))


def test_many_to_one_with_one_cluster_per_pixel_is_perfect() -> None:
    gt = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(3))
    conf = confusion_matrix(gt, torch.arange(50), num_classes=4, num_pred=50, ignore_index=255)
    s = score_confusion(
        conf,
        matching=Matching.many_to_one_precision,
        ignore_index=255,
        mean_over=MeanOver.all_classes,
    )
    assert s.miou == 1.0


def test_identity_needs_square_confusion() -> None:
    with pytest.raises(ValueError, match="identity matching needs Q == C"):
        score_confusion(
            np.zeros((3, 5), dtype=np.int64),
            matching=Matching.identity,
            ignore_index=255,
            mean_over=MeanOver.all_classes,
        )
