"""Unsupervised segmentation (K = C, Hungarian) and overclustering (K > C, many-to-one precision).

evaluation.md §3: val patch tokens -> per-dimension z-score (ddof 0, σ = 0 -> 1) -> faiss
``PCAMatrix(D, pca_dim)`` (trained on at most ``max_points_per_d · D`` points) -> faiss k-means per
seed (trained on at most ``max_points_per_centroid · K`` points) -> nearest-centroid ids on the
``s × s`` grid -> torch ``nearest`` to ``m × m`` -> dataset-level confusion on the val split itself.

The features are the pipeline's cached val tokens (no augmentation, no upsampling), so this
protocol never runs a backbone. faiss is imported lazily inside the functions that need it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from neco.config.evals import ClusterConfig, KmeansBackend, MaskResize, Matching
from neco.data.types import SegDataset
from neco.evals.extract import ValMask, load_masks
from neco.evals.metrics import confusion_matrix, mean_class_ids, score_confusion
from neco.evals.results import ClusterKResult, ClusterResult, Example, mean_std, settings_dict
from neco.evals.transforms import pil_resize_image, torch_resize_mask

Progress = Callable[[Mapping[str, Any]], None]
FAISS_MIN_POINTS_PER_CENTROID = 39  # faiss warns below 39·K training points


def standardise(x: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Per-dimension z-score over all rows (population std, σ = 0 -> 1; float64 statistics).

    Args:
        x: float ``(N, D)``.
        chunk: rows per accumulation block (memory only).

    Returns:
        float32 ``(N, D)``.
    """
    n = x.shape[0]
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        total += x[i : i + chunk].double().sum(0)
    mean = total / n
    sq = torch.zeros_like(total)
    for i in range(0, n, chunk):
        sq += ((x[i : i + chunk].double() - mean) ** 2).sum(0)
    std = (sq / n).sqrt()
    std[std == 0] = 1.0
    out = torch.empty(x.shape, dtype=torch.float32)
    for i in range(0, n, chunk):
        out[i : i + chunk] = ((x[i : i + chunk].double() - mean) / std).float()
    return out


def pca_reduce(x: np.ndarray, dim: int, max_points_per_d: int | None) -> tuple[np.ndarray, int]:
    """faiss ``PCAMatrix(D, dim)`` (centred, no whitening or rotation) trained and applied.

    Args:
        x: float32 ``(N, D)``.
        dim: output dims (≤ min(D, N)).
        max_points_per_d: training subsample per input dim (faiss default 1000); None = all.

    Returns:
        float32 ``(N, dim)`` and the number of PCA training points.
    """
    import faiss

    n, d_in = x.shape
    pca = faiss.PCAMatrix(d_in, dim, 0.0, False)
    per_d = max_points_per_d if max_points_per_d is not None else math.ceil(n / d_in) + 1
    pca.max_points_per_d = per_d
    pca.train(x)
    return pca.apply(x), min(n, per_d * d_in)


def kmeans(
    x: np.ndarray, k: int, *, seed: int, niter: int, nredo: int, max_points_per_centroid: int | None
) -> tuple[np.ndarray, float, int]:
    """faiss k-means (random init, ``nredo`` restarts) and nearest-centroid assignment.

    Args:
        x: float32 ``(N, d)``.
        k: clusters (≤ N).
        seed: faiss seed (initialisation and training subsample).
        niter: iterations per restart.
        nredo: restarts; the lowest objective wins.
        max_points_per_centroid: training subsample per centroid (faiss default 256); None = all.

    Returns:
        int64 ``(N,)`` cluster ids, the objective of the kept centroids over *all* N points (sum
        of squared L2 distances to the nearest centroid), and the number of training points.
    """
    import faiss

    n = x.shape[0]
    per_c = max_points_per_centroid if max_points_per_centroid is not None else n
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=False,
        max_points_per_centroid=per_c,
        verbose=False,
    )
    km.train(x)
    dist, ids = km.index.search(x, 1)
    return ids[:, 0].astype(np.int64), float(dist.astype(np.float64).sum()), min(n, per_c * k)


def k_values(cfg: ClusterConfig, num_classes: int) -> list[int]:
    """Requested K values in run order: C first (if ``include_gt``), then ``ks`` without repeats."""
    out = [num_classes] if cfg.include_gt else []
    for k in cfg.ks:
        if k < 1:
            raise ValueError(f"cluster.ks: K must be >= 1, got {k}")
        if k not in out:
            out.append(k)
    if not out:
        raise ValueError("cluster: no K to run (include_gt is false and ks is empty)")
    return out


def fingerprint(cfg: ClusterConfig, pca_dim: int, n_mean: int) -> str:
    """Short settings string (evaluation.md §1.7)."""
    pca_pts = "all" if cfg.pca_max_points_per_d is None else f"{cfg.pca_max_points_per_d}D"
    mppc = "all" if cfg.max_points_per_centroid is None else cfg.max_points_per_centroid
    return (
        f"cluster[S{cfg.input_size} m{cfg.mask_size} z pca{pca_dim}/{pca_pts} "
        f"{cfg.backend.value} it{cfg.niter} r{cfg.nredo} mppc{mppc} seeds{len(cfg.seeds)} "
        f"val={'full' if cfg.full_val else 'drop_last'} mean{n_mean}]"
    )


def cluster_eval(
    val_features: torch.Tensor,
    val_ds: SegDataset,
    cfg: ClusterConfig,
    *,
    grid: int,
    figure_examples: int,
    progress: Progress | None = None,
) -> ClusterResult:
    """Cluster val patch tokens and score them against the val GT (evaluation.md §3.2).

    K larger than the number of points is capped to it (``capped`` in the result) and a warning is
    issued below faiss's 39·K training points; K = C uses Hungarian matching, every other K
    many-to-one precision matching (as the reference). K < C is under-clustering: it runs, is
    flagged ``under_clustering`` in the result and in the tables, and warns.

    Args:
        val_features: float32 ``(N_img, s*s, D)`` tokens of ``val_ds`` in dataset order, at
            ``cfg.input_size`` (the pipeline's cached features).
        val_ds: the val split (GT, class names, ignore index).
        cfg: settings.
        grid: token grid side s.
        figure_examples: val images kept as figure examples (not serialised).
        progress: optional callback, one dict per (K, seed).

    Returns:
        The :class:`ClusterResult`.
    """
    start = time.perf_counter()
    if cfg.backend is not KmeansBackend.faiss:
        raise ValueError(f"cluster.backend={cfg.backend!r} is not implemented")
    num_classes, ignore = val_ds.num_classes, val_ds.ignore_index
    if val_features.ndim != 3 or val_features.shape[:2] != (len(val_ds), grid * grid):
        raise ValueError(
            f"val_features shape {tuple(val_features.shape)} != (N_img, s*s, D) with N_img = "
            f"{len(val_ds)} and s = grid = {grid}"
        )
    if not cfg.seeds:
        raise ValueError("cluster.seeds is empty")
    n_img = (
        len(val_ds)
        if cfg.full_val
        else (len(val_ds) // cfg.drop_last_batch_size) * cfg.drop_last_batch_size
    )
    if n_img == 0:
        raise ValueError(
            f"cluster_eval: no val image scored (N = {len(val_ds)}, full_val = {cfg.full_val})"
        )
    gt = load_masks(
        ValMask(val_ds, cfg.input_size, cfg.mask_size), n_img, batch_size=64, num_workers=0
    )
    feats = val_features[:n_img].reshape(-1, val_features.shape[2])
    n_points, dim = feats.shape
    pca_dim = min(cfg.pca_dim, dim, n_points)
    x, n_pca_train = pca_reduce(standardise(feats).numpy(), pca_dim, cfg.pca_max_points_per_d)
    mean_over = cfg.metric.ade20k_mean_over
    n_ex = min(figure_examples, n_img)
    example_maps: dict[str, np.ndarray] = {}

    results = []
    ks = k_values(cfg, num_classes)
    for k_req in ks:
        k_used = min(k_req, n_points)
        if n_points < FAISS_MIN_POINTS_PER_CENTROID * k_used:
            warnings.warn(
                f"cluster_eval: {n_points} points for K={k_used} is below faiss's recommended "
                f"{FAISS_MIN_POINTS_PER_CENTROID}*K",
                stacklevel=2,
            )
        # The reference matches one-to-one (Hungarian) only at K = C; every other K, including
        # under-clustering K < C (ADE20K at K = 100), is scored many-to-one (evaluation.md §3.3).
        matching = Matching.hungarian if k_used == num_classes else Matching.many_to_one_precision
        if k_used < num_classes:
            warnings.warn(
                f"cluster_eval: K={k_used} < C={num_classes} is under-clustering: at most "
                f"{k_used} classes can be matched (flagged in the result)",
                stacklevel=2,
            )
        scores, objectives, confs = [], [], []
        n_km_train = 0
        for seed in cfg.seeds:
            ids, obj, n_km_train = kmeans(
                x,
                k_used,
                seed=seed,
                niter=cfg.niter,
                nredo=cfg.nredo,
                max_points_per_centroid=cfg.max_points_per_centroid,
            )
            cmap = torch_resize_mask(
                torch.from_numpy(ids).view(n_img, grid, grid), cfg.mask_size, MaskResize.nearest
            )
            conf = confusion_matrix(
                gt, cmap, num_classes=num_classes, num_pred=k_used, ignore_index=ignore
            ).numpy()
            score = score_confusion(
                conf, matching=matching, ignore_index=ignore, mean_over=mean_over
            )
            scores.append(score)
            objectives.append(obj)
            confs.append(conf)
            if seed == cfg.seeds[0] and n_ex and (k_req == num_classes or k_req == max(ks)):
                mapped = np.asarray(score.mapping)[cmap[:n_ex].numpy()]
                example_maps[f"clusters_k{k_req}"] = cmap[:n_ex].numpy()
                example_maps[f"mapped_k{k_req}"] = mapped.astype(np.uint8)
            if progress is not None:
                progress({"protocol": "overcluster", "k": k_used, "seed": seed, "miou": score.miou})
        mean, std = mean_std([s.miou for s in scores])
        variants = {
            name: float(np.mean([s.variants[name] for s in scores])) for name in scores[0].variants
        }
        results.append(
            ClusterKResult(
                k_requested=k_req,
                k_used=k_used,
                capped=k_used < k_req,
                under_clustering=k_used < num_classes,
                matching=matching.value,
                seeds=tuple(cfg.seeds),
                miou_per_seed=tuple(s.miou for s in scores),
                mean=mean,
                std=std,
                objective_per_seed=tuple(objectives),
                iou_per_class_mean=tuple(
                    np.mean([s.iou_per_class for s in scores], axis=0).tolist()
                ),
                variants={matching.value: mean, **variants},
                n_kmeans_train_points=n_km_train,
                confusion_per_seed=tuple(confs),
                mapping_per_seed=tuple(s.mapping for s in scores),
            )
        )

    gt_run = results[0] if cfg.include_gt else None
    examples = tuple(
        Example(
            val_ds[i].id,
            pil_resize_image(val_ds[i].image, cfg.input_size),
            gt[i].numpy(),
            {name: maps[i] for name, maps in example_maps.items()},
        )
        for i in range(n_ex)
    )
    n_mean = len(mean_class_ids(num_classes, ignore, mean_over))
    return ClusterResult(
        miou=gt_run.mean if gt_run else None,
        iou_per_class=gt_run.iou_per_class_mean if gt_run else (),
        variants=gt_run.variants if gt_run else {},
        confusion=gt_run.confusion_per_seed[0] if gt_run else None,
        mapping=gt_run.mapping_per_seed[0] if gt_run else (),
        results=tuple(results),
        pca_dim_used=pca_dim,
        n_pca_train_points=n_pca_train,
        class_names=tuple(val_ds.class_names),
        settings=settings_dict(cfg),
        fingerprint=fingerprint(cfg, pca_dim, n_mean),
        seed=tuple(cfg.seeds),
        n_points=n_points,
        n_images=n_img,
        n_pixels=int((gt != ignore).sum()),
        runtime_s=time.perf_counter() - start,
        device="cpu",
        examples=examples,
    )
