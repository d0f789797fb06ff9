"""Hummingbird dense nearest-neighbour retrieval ("in-context scene understanding"), §4.

For each memory fraction and subset seed: build the memory bank (:mod:`neco.evals.hbird_memory`),
search the k nearest keys of every L2-normalised query patch by inner product, weight their soft
labels with ``softmax(sim / τ)``, reshape to ``(C, s, s)``, bilinearly upsample to ``S × S``, take
the argmax and accumulate a dataset-level confusion against the val GT (torch ``nearest`` from the
original to S²). Hungarian (reference quirk) and identity mIoU are both stored.

Feature sources: query tokens are deterministic and come from ``query_features`` (the pipeline's
cache, at ``input_size`` with this protocol's ``image_std`` and ``autocast``) or are extracted once
here; memory tokens are always extracted live because every epoch is freshly augmented.

Reference: open-hummingbird-eval v2.0.0 ``hbird/hbird_eval.py`` (facts only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from neco.config.evals import (
    HbirdConfig,
    Matching,
    MeanOver,
    MemoryIgnore,
    NnBackend,
)
from neco.config.sections import EvalRuntime
from neco.data.types import SegDataset
from neco.evals.extract import extract_val_features, load_masks
from neco.evals.extractor import FeatureExtractor
from neco.evals.hbird_memory import Subsets, build_memory, memory_indices, parse_fraction
from neco.evals.hbird_query import QueryMask, score_queries, search_recall
from neco.evals.knn import build_index
from neco.evals.metrics import mean_class_ids, score_confusion
from neco.evals.results import (
    Example,
    HbirdFraction,
    HbirdResult,
    HbirdRun,
    mean_std,
    settings_dict,
)
from neco.evals.transforms import check_crop_params, derived_generator, pil_resize_image

Progress = Callable[[Mapping[str, Any]], None]


def _validate(cfg: HbirdConfig, patch: int) -> None:
    if cfg.input_size % patch:
        raise ValueError(f"hbird.input_size={cfg.input_size} is not divisible by patch {patch}")
    if cfg.matching not in (Matching.hungarian, Matching.identity):
        raise ValueError(f"hbird.matching must be hungarian or identity, got {cfg.matching.value}")
    if cfg.k < 1 or cfg.temperature <= 0 or cfg.augmentation_epochs < 1:
        raise ValueError(
            "hbird: k and augmentation_epochs must be >= 1 and temperature > 0"
        )
    if not 0 <= cfg.jitter.hue <= 0.5:
        raise ValueError(f"hbird.jitter.hue must be in [0, 0.5], got {cfg.jitter.hue}")
    if not cfg.fractions or not 1 <= cfg.full_repeats <= len(cfg.subset_seeds):
        raise ValueError(
            "hbird: fractions must be non-empty and 1 <= full_repeats <= len(subset_seeds)"
        )
    for label in cfg.fractions:
        parse_fraction(label)


def _fmt_count(m: int | None) -> str:
    if m is None:
        return "all"
    return f"{m / 1e6:g}M" if m >= 10**6 else f"{m / 1e3:g}k" if m >= 10**3 else str(m)


def fingerprint(cfg: HbirdConfig, nn_name: str, n_mean: int) -> str:
    """Short settings string (evaluation.md §1.7)."""
    ign = "ign->0" if cfg.memory_ignore is MemoryIgnore.to_class0 else "ign=drop"
    return (
        f"hbird[S{cfg.input_size} M{_fmt_count(cfg.memory_size)} E{cfg.augmentation_epochs} "
        f"k{cfg.k} tau{cfg.temperature:g} std={cfg.image_std.value} {ign} "
        f"match={cfg.matching.value} nn={nn_name} ac={cfg.autocast.value} mean{n_mean}]"
    )


def _run(
    extractor: FeatureExtractor,
    memory_ds: SegDataset,
    query_features: torch.Tensor,
    gt: torch.Tensor,
    cfg: HbirdConfig,
    *,
    label: str,
    run_seed: int,
    seed: int,
    subsets: Subsets | None,
    device: torch.device,
    n_keep: int,
    runtime: EvalRuntime,
    num_workers: int,
) -> tuple[HbirdRun, str, torch.Tensor]:
    """One memory (fraction, subset seed): build, search, score. Returns the run record, the
    search backend name and the predictions of the first ``n_keep`` queries."""
    ignore, mean_over = memory_ds.ignore_index, cfg.metric.ade20k_mean_over
    t0 = time.perf_counter()
    indices, derived = memory_indices(memory_ds, label, run_seed, subsets)
    bank = build_memory(
        extractor,
        memory_ds,
        indices,
        cfg,
        device=device,
        seed=seed,
        run_seed=run_seed,
        batch_size=runtime.hbird_batch_size,
        num_workers=num_workers,
    )
    t1 = time.perf_counter()
    index = build_index(
        bank.keys,
        backend=cfg.nn,
        ann=cfg.ann,
        query_chunk=runtime.hbird_query_chunk,
        key_chunk=runtime.hbird_key_chunk,
        seed=run_seed,
    )
    t2 = time.perf_counter()
    conf, preds = score_queries(
        index,
        bank.labels,
        query_features,
        gt,
        k=cfg.k,
        temperature=cfg.temperature,
        batch_size=runtime.hbird_batch_size,
        ignore_index=ignore,
        device=device,
        n_keep=n_keep,
    )
    t3 = time.perf_counter()
    recall = None
    if cfg.nn is not NnBackend.exact:
        recall = search_recall(
            index,
            bank.keys,
            query_features,
            k=cfg.k,
            samples=cfg.recall_samples,
            generator=derived_generator(seed, "hbird-recall", run_seed),
            query_chunk=runtime.hbird_query_chunk,
            key_chunk=runtime.hbird_key_chunk,
        )
    t4 = time.perf_counter()
    scores = {
        m: score_confusion(conf, matching=m, ignore_index=ignore, mean_over=mean_over)
        for m in (Matching.hungarian, Matching.identity)
    }
    primary = scores[cfg.matching]
    run = HbirdRun(
        fraction=label,
        subset_seed=run_seed,
        miou=primary.miou,
        variants={**{m.value: sc.miou for m, sc in scores.items()}, **primary.variants},
        iou_per_class=primary.iou_per_class,
        confusion=conf.numpy(),
        mapping=primary.mapping,
        memory_rows=bank.keys.shape[0],
        per_view_k=bank.per_view_k,
        n_memory_images=len(indices),
        derived_subset=derived,
        recall_at_k=recall,
        n_pixels=int(conf.sum()),
        timings_s={
            "memory": t1 - t0,
            "index": t2 - t1,
            "search": t3 - t2,
            "recall": t4 - t3,
            "metric": time.perf_counter() - t4,
        },
    )
    return run, index.name, preds


def _examples(
    ds: SegDataset, gt: torch.Tensor, preds: torch.Tensor, run: HbirdRun, input_size: int
) -> tuple[Example, ...]:
    hungarian = np.asarray(
        score_confusion(
            run.confusion,
            matching=Matching.hungarian,
            ignore_index=ds.ignore_index,
            mean_over=MeanOver.all_classes,
        ).mapping
    )
    out = []
    for i in range(preds.shape[0]):
        pred = preds[i].numpy()
        maps = {"pred": pred.astype(np.uint8), "pred_hungarian": hungarian[pred].astype(np.uint8)}
        out.append(
            Example(ds[i].id, pil_resize_image(ds[i].image, input_size), gt[i].numpy(), maps)
        )
    return tuple(out)


def hummingbird(
    extractor: FeatureExtractor,
    memory_ds: SegDataset,
    query_ds: SegDataset,
    cfg: HbirdConfig,
    *,
    device: torch.device,
    seed: int,
    runtime: EvalRuntime,
    query_features: torch.Tensor | None = None,
    subsets: Subsets | None = None,
    progress: Progress | None = None,
    num_workers: int = 0,
) -> HbirdResult:
    """Hummingbird evaluation over all configured fractions and subset seeds (§4.4, §4.6).

    Fractions below 1 run every ``subset_seeds`` entry; 1/1 runs the first ``full_repeats``.
    Examples (not serialised) come from the first run.

    Args:
        extractor: frozen extractor on ``device`` (memory views are extracted live).
        memory_ds: memory (train) split.
        query_ds: query (val) split.
        cfg: settings.
        device: extractor, bank and search device.
        runtime: batch and search-block sizes and the number of figure examples (speed and
            figures only).
        seed: protocol seed, combined with each run's subset seed for augmentation, sampling and
            recall sampling.
        query_features: cached float32 ``(N_q, s*s, D)`` tokens of ``query_ds`` computed with
            this config's ``input_size``, ``image_std`` and ``autocast``; extracted once here
            when None.
        subsets: fraction label -> {seed: memory ids} (HB file sets); a missing entry is derived
            with :func:`derived_subset` and flagged ``derived_subset``.
        progress: optional callback, one dict per run.
        num_workers: loader workers (speed only).

    Returns:
        The :class:`HbirdResult`.
    """
    check_crop_params("eval.hbird", cfg.crop_scale, cfg.crop_ratio)
    start = time.perf_counter()
    _validate(cfg, extractor.patch_size)
    if (memory_ds.num_classes, memory_ds.ignore_index) != (
        query_ds.num_classes,
        query_ds.ignore_index,
    ):
        raise ValueError(
            "hummingbird: memory and query splits disagree on num_classes/ignore_index"
        )
    grid = cfg.input_size // extractor.patch_size
    if query_features is None:
        query_features = extract_val_features(
            extractor,
            query_ds,
            input_size=cfg.input_size,
            image_std=cfg.image_std,
            batch_size=runtime.hbird_batch_size,
            device=device,
            autocast=cfg.autocast,
            num_workers=num_workers,
        )
    expected = (len(query_ds), grid * grid, extractor.embed_dim)
    if tuple(query_features.shape) != expected:
        raise ValueError(
            f"query_features shape {tuple(query_features.shape)} != (N_q, s*s, D) = {expected}"
        )
    gt = load_masks(
        QueryMask(query_ds, cfg.input_size),
        len(query_ds),
        batch_size=runtime.hbird_batch_size,
        num_workers=num_workers,
    )
    n_keep = min(runtime.figure_examples, len(query_ds))
    fractions, nn_names = [], []
    examples: tuple[Example, ...] = ()
    for label in cfg.fractions:
        full = parse_fraction(label) == 1
        runs = []
        for run_seed in cfg.subset_seeds[: cfg.full_repeats] if full else cfg.subset_seeds:
            run, nn_name, preds = _run(
                extractor,
                memory_ds,
                query_features,
                gt,
                cfg,
                label=label,
                run_seed=run_seed,
                seed=seed,
                subsets=subsets,
                device=device,
                n_keep=0 if examples else n_keep,
                runtime=runtime,
                num_workers=num_workers,
            )
            if not examples and n_keep:
                examples = _examples(query_ds, gt, preds, run, cfg.input_size)
            runs.append(run)
            nn_names.append(nn_name)
            if progress is not None:
                progress(
                    {
                        "protocol": "hbird",
                        "fraction": label,
                        "subset_seed": run_seed,
                        "miou": run.miou,
                    }
                )
        mean, std = mean_std([r.miou for r in runs])
        fractions.append(HbirdFraction(label, mean, std, tuple(runs)))
    full_runs = [f for f in fractions if parse_fraction(f.fraction) == 1]
    recalls = [r.recall_at_k for f in fractions for r in f.runs if r.recall_at_k is not None]
    n_mean = len(
        mean_class_ids(query_ds.num_classes, query_ds.ignore_index, cfg.metric.ade20k_mean_over)
    )
    return HbirdResult(
        miou=full_runs[0].mean if full_runs else None,
        results=tuple(fractions),
        class_names=tuple(query_ds.class_names),
        settings=settings_dict(cfg),
        fingerprint=fingerprint(cfg, nn_names[0], n_mean),
        nn_backend=nn_names[0],
        recall_at_k=float(np.mean(recalls)) if recalls else None,
        seed=seed,
        n_images=len(query_ds),
        runtime_s=time.perf_counter() - start,
        device=str(device),
        examples=examples,
    )
