"""Clustering and overclustering (evaluation.md §3)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neco.config.evals import ClusterConfig, KmeansBackend, MeanOver, MetricConfig
from neco.evals.overcluster import cluster_eval, k_values, standardise

from .conftest import band_dataset

pytest.importorskip("faiss")

CLUSTER_KEYS = {"miou", "results", "settings", "fingerprint", "n_points", "n_images", "runtime_s"}
RESULT_KEYS = {
    "k_requested",
    "k_used",
    "capped",
    "matching",
    "mean",
    "std",
    "miou_per_seed",
    "seeds",
    "objective_per_seed",
}


def _cfg(**overrides: object) -> ClusterConfig:
    cfg = ClusterConfig(
        input_size=32,
        mask_size=16,
        pca_dim=50,
        pca_max_points_per_d=1000,
        include_gt=True,
        ks=[6, 12],
        seeds=[0, 1, 2],
        niter=10,
        nredo=30,
        max_points_per_centroid=256,
        backend=KmeansBackend.faiss,
        full_val=True,
        drop_last_batch_size=4,
        metric=MetricConfig(MeanOver.all_classes),
    )
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def _clustered_features(
    ds: object, *, patch: int, dim: int, noise: float, seed: int
) -> torch.Tensor:
    """Tokens = class centroid of the patch (from the patch-aligned masks) + small noise."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(ds.num_classes, dim, generator=g) * 3  # type: ignore[attr-defined]
    feats = []
    for sample in ds:  # type: ignore[attr-defined]
        cls = torch.from_numpy(
            sample.mask[patch // 2 :: patch, patch // 2 :: patch].astype(np.int64)
        )
        feats.append(centroids[cls.flatten()])
    x = torch.stack(feats)
    return x + noise * torch.randn(x.shape, generator=g)


@pytest.fixture(scope="module")
def bands() -> object:
    return band_dataset(12, num_classes=3, size=32, patch=4, seed=0)


def test_separated_clusters_give_perfect_miou_for_k_equal_c_and_overclustering(
    bands: object,
) -> None:
    # faiss initialises from random points (no k-means++): with C = 3 and 30 restarts the
    # lowest-objective run covers every class with near certainty.
    feats = _clustered_features(bands, patch=4, dim=16, noise=0.05, seed=0)
    result = cluster_eval(feats, bands, _cfg(), grid=8, figure_examples=2)
    assert [r.k_requested for r in result.results] == [3, 6, 12]
    assert result.miou == pytest.approx(1.0)
    gt_run, over = result.results[0], result.results[1:]
    assert gt_run.matching == "hungarian" and gt_run.miou_per_seed == pytest.approx((1.0,) * 3)
    assert gt_run.std == pytest.approx(0.0)
    for r in over:
        assert r.matching == "many_to_one_precision" and r.mean == pytest.approx(1.0)
        assert not r.capped and r.k_used == r.k_requested
    assert result.n_points == 12 * 64 and result.n_images == 12
    assert result.pca_dim_used == 16  # min(pca_dim, D, N) with D = 16
    ex = result.examples[0]
    assert set(ex.preds) == {"clusters_k3", "mapped_k3", "clusters_k12", "mapped_k12"}
    assert np.array_equal(ex.preds["mapped_k3"], ex.gt)
    record = result.to_dict()
    assert CLUSTER_KEYS <= set(record) and all(RESULT_KEYS <= set(r) for r in record["results"])
    json.dumps(record, allow_nan=False)


def test_random_features_score_low(bands: object) -> None:
    feats = torch.randn(12, 64, 16, generator=torch.Generator().manual_seed(1))
    result = cluster_eval(feats, bands, _cfg(ks=[], seeds=[0]), grid=8, figure_examples=2)
    assert result.miou is not None and 0.1 < result.miou < 0.3  # chance ≈ 1/(2C − 1) = 0.2


def test_k_is_capped_at_the_number_of_points(bands: object) -> None:
    feats = _clustered_features(bands, patch=4, dim=16, noise=0.05, seed=2)
    cfg = _cfg(include_gt=False, ks=[5000], seeds=[0], full_val=False, drop_last_batch_size=8)
    with pytest.warns(UserWarning, match="below faiss's recommended"):
        result = cluster_eval(feats, bands, cfg, grid=8, figure_examples=2)
    r = result.results[0]
    assert result.n_images == 8 and result.n_points == 8 * 64
    assert (r.k_requested, r.k_used, r.capped) == (5000, 512, True)
    assert r.mean == pytest.approx(1.0) and r.std is None  # one seed: no std
    assert result.miou is None  # no K = C run
    assert result.to_dict()["results"][0]["capped"] is True


def test_same_seeds_same_numbers(bands: object) -> None:
    feats = _clustered_features(bands, patch=4, dim=16, noise=1.5, seed=3)  # overlapping clusters
    cfg = _cfg(ks=[7], seeds=[0, 1], nredo=1)
    a = cluster_eval(feats, bands, cfg, grid=8, figure_examples=2)
    b = cluster_eval(feats, bands, cfg, grid=8, figure_examples=2)
    assert [r.miou_per_seed for r in a.results] == [r.miou_per_seed for r in b.results]
    assert [r.objective_per_seed for r in a.results] == [r.objective_per_seed for r in b.results]
    objectives = a.results[1].objective_per_seed
    assert objectives[0] != objectives[1]  # the seed reaches faiss


def test_standardise_population_std_and_zero_variance() -> None:
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    z = standardise(x, chunk=2)
    ref = (x.double().numpy() - x.double().numpy().mean(0)) / np.where(
        x.numpy().std(0) == 0, 1, x.numpy().std(0)
    )
    assert np.allclose(z.numpy(), ref, atol=1e-6)
    assert torch.all(z[:, 1] == 0)  # σ = 0 -> 1


def test_k_values_order_and_validation() -> None:
    assert k_values(_cfg(ks=[100, 5, 300]), 5) == [5, 100, 300]
    assert k_values(_cfg(include_gt=False, ks=[100]), 5) == [100]
    with pytest.raises(ValueError, match="no K to run"):
        k_values(_cfg(include_gt=False, ks=[]), 5)


def test_bad_feature_shape_fails_clearly(bands: object) -> None:
    with pytest.raises(ValueError, match=r"val_features shape \(12, 49, 16\)"):
        cluster_eval(torch.zeros(12, 49, 16), bands, _cfg(), grid=8, figure_examples=2)


def test_under_clustering_uses_many_to_one_and_is_flagged(bands: object) -> None:
    """K < C (ADE20K at K = 100): many-to-one matching like the reference, flagged, warned."""
    from neco.config.evals import Matching, MeanOver
    from neco.evals.metrics import score_confusion

    feats = _clustered_features(bands, patch=4, dim=16, noise=0.05, seed=4)
    cfg = _cfg(include_gt=False, ks=[2], seeds=[0])
    with pytest.warns(UserWarning, match="under-clustering"):
        result = cluster_eval(feats, bands, cfg, grid=8, figure_examples=0)
    r = result.results[0]
    assert (r.k_used, r.under_clustering, r.matching) == (2, True, "many_to_one_precision")
    expected = score_confusion(
        r.confusion_per_seed[0], matching=Matching.many_to_one_precision,
        ignore_index=bands.ignore_index,  # type: ignore[attr-defined]
        mean_over=MeanOver.all_classes,
    )
    assert r.mean == pytest.approx(expected.miou)
    assert result.to_dict()["results"][0]["under_clustering"] is True
    over = cluster_eval(feats, bands, _cfg(ks=[6], seeds=[0]), grid=8, figure_examples=0)
    assert [x.under_clustering for x in over.results] == [False, False]
