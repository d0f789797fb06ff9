"""Hummingbird dense nearest-neighbour retrieval (evaluation.md §4)."""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from neco.config.evals import (
    AnnConfig,
    Autocast,
    HbirdConfig,
    ImageStd,
    JitterConfig,
    LabelStorage,
    Matching,
    MeanOver,
    MemoryIgnore,
    MetricConfig,
    NnBackend,
)
from neco.config.sections import EvalRuntime
from neco.evals.hbird import hummingbird
from neco.evals.hbird_memory import (
    derived_subset,
    memory_indices,
    patch_histograms,
    patches_per_view,
    select_patches,
)
from neco.evals.hbird_query import transfer_labels

from .conftest import ColourExtractor, RandomExtractor, band_dataset, block_dataset

pytest.importorskip("faiss")

CPU = torch.device("cpu")
HBIRD_KEYS = {
    "miou",
    "results",
    "settings",
    "fingerprint",
    "nn_backend",
    "recall_at_k",
    "runtime_s",
}
RUN_KEYS = {
    "subset_seed",
    "miou",
    "variants",
    "memory_rows",
    "per_view_k",
    "n_memory_images",
    "derived_subset",
}


RT = EvalRuntime(
    features_batch_size=8, figure_examples=2, hbird_batch_size=8, hbird_query_chunk=128,
    hbird_key_chunk=512,
)


def _cfg(**overrides: object) -> HbirdConfig:
    cfg = HbirdConfig(
        input_size=32,
        memory_size=None,
        augmentation_epochs=2,
        k=10,
        temperature=0.02,
        jitter=JitterConfig(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.5),
        crop_scale=[0.5, 2.0],
        crop_ratio=[3 / 4, 4 / 3],
        image_std=ImageStd.correct,
        memory_ignore=MemoryIgnore.to_class0,
        matching=Matching.hungarian,
        nn=NnBackend.exact,
        ann=AnnConfig(
            ivf_nlist=8, ivf_nprobe=2, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=16
        ),
        recall_samples=300,
        autocast=Autocast.fp16_on_cuda,
        fractions=["1/1"],
        subset_seeds=[42, 400, 783],
        full_repeats=1,
        label_storage=LabelStorage.float32,
        metric=MetricConfig(MeanOver.all_classes),
    )
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


NO_AUGMENTATION = dict(
    jitter=JitterConfig(0.1, 0.1, 0.1, 0.1, p=0.0), crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0]
)


def _noisy_colours() -> ColourExtractor:
    """Class one-hot plus noise dims: neighbours are a random sample of the class's patches."""
    return ColourExtractor(4, embed_dim=16, noise=0.2, seed=0)


@pytest.fixture(scope="module")
def blocks() -> tuple[object, object]:
    kw = dict(num_classes=6, extent=(0.5, 0.75), sizes=(32, 40, 48))
    return block_dataset(16, seed=0, **kw), block_dataset(8, seed=1, **kw)


def test_features_that_encode_the_class_give_perfect_miou() -> None:
    # patch-aligned horizontal bands + un-augmented memory: every token determines its patch label
    memory = band_dataset(12, num_classes=4, size=32, patch=4, seed=0)
    query = band_dataset(6, num_classes=4, size=32, patch=4, seed=1)
    result = hummingbird(
        ColourExtractor(4), memory, query, _cfg(**NO_AUGMENTATION), device=CPU, seed=0, runtime=RT)
    run = result.results[0].runs[0]
    assert result.miou == 1.0
    assert run.variants["hungarian"] == 1.0 and run.variants["identity"] == 1.0
    assert run.memory_rows == 12 * 2 * 64 and run.per_view_k == "all"
    assert run.n_pixels == 6 * 32 * 32
    assert result.nn_backend == "exact-faiss-flat" and result.recall_at_k is None


def test_reference_augmentation_keeps_high_miou_and_is_deterministic(blocks: tuple) -> None:
    memory, query = blocks
    state = torch.random.get_rng_state()
    a = hummingbird(_noisy_colours(), memory, query, _cfg(), device=CPU, seed=0, runtime=RT)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG use
    b = hummingbird(_noisy_colours(), memory, query, _cfg(), device=CPU, seed=0, runtime=RT)
    c = hummingbird(_noisy_colours(), memory, query, _cfg(), device=CPU, seed=1, runtime=RT)
    assert a.miou is not None and a.miou > 0.8
    assert a.miou == b.miou
    assert np.array_equal(a.results[0].runs[0].confusion, b.results[0].runs[0].confusion)
    assert not np.array_equal(a.results[0].runs[0].confusion, c.results[0].runs[0].confusion)
    run = a.results[0].runs[0]
    assert run.variants["hungarian"] >= run.variants["identity"]  # Hungarian can only raise it
    ex = a.examples[0]
    assert ex.image.shape == (32, 32, 3) and ex.gt.shape == (32, 32)
    assert set(ex.preds) == {"pred", "pred_hungarian"}
    assert a.fingerprint == (
        "hbird[S32 Mall E2 k10 tau0.02 std=correct ign->0 match=hungarian "
        "nn=exact-faiss-flat ac=fp16_on_cuda mean6]"
    )


def test_random_features_score_near_chance(blocks: tuple) -> None:
    memory, query = blocks
    result = hummingbird(
        RandomExtractor(4, 16, seed=0), memory, query, _cfg(), device=CPU, seed=0, runtime=RT
    )
    run = result.results[0].runs[0]
    # a prediction independent of the GT with class frequencies π scores IoU_c = ρπ/(ρ+π−ρπ);
    # with π = ρ (the memory looks like the queries) the chance level is mean ρ/(2−ρ).
    rho = run.confusion.sum(1) / run.confusion.sum()
    chance = float(np.mean(rho / (2 - rho)))
    assert run.variants["identity"] < 0.4
    assert 0.5 * chance < run.variants["identity"] < 2.0 * chance


def test_low_shot_fractions_given_and_derived_subsets(blocks: tuple) -> None:
    memory, query = blocks
    given = {"1/4": {42: [memory.ids[3], memory.ids[0], memory.ids[7], memory.ids[9]]}}
    cfg = _cfg(fractions=["1/1", "1/4"], memory_size=3 * 4 * 2)
    result = hummingbird(
        _noisy_colours(), memory, query, cfg, device=CPU, seed=0, subsets=given, runtime=RT
    )
    full, quarter = result.results
    assert full.fraction == "1/1" and len(full.runs) == 1 and full.std is None
    assert result.miou == full.mean
    assert [r.subset_seed for r in quarter.runs] == [42, 400, 783]
    assert [r.derived_subset for r in quarter.runs] == [False, True, True]
    assert all(r.n_memory_images == 4 for r in quarter.runs)
    # M = 24 over 4 images x 2 epochs: K_img = 3 rows per view; over 16 images: ⌊24/32⌋ -> 1
    assert [r.per_view_k for r in quarter.runs] == [3, 3, 3] and full.runs[0].per_view_k == 1
    assert all(r.memory_rows == 4 * 2 * 3 for r in quarter.runs)
    assert quarter.mean == pytest.approx(np.mean([r.miou for r in quarter.runs]))
    assert quarter.std == pytest.approx(np.std([r.miou for r in quarter.runs], ddof=1))
    record = result.to_dict()
    assert HBIRD_KEYS <= set(record)
    assert all(RUN_KEYS <= set(r) for f in record["results"] for r in f["runs"])
    json.dumps(record, allow_nan=False)


def test_label_storage_counts_equals_float32_and_drop_mode_runs(blocks: tuple) -> None:
    memory, query = blocks
    base = _cfg(memory_ignore=MemoryIgnore.drop)
    a = hummingbird(_noisy_colours(), memory, query, base, device=CPU, seed=2, runtime=RT)
    b = hummingbird(
        _noisy_colours(),
        memory,
        query,
        dataclasses.replace(base, label_storage=LabelStorage.counts_int16),
        device=CPU,
        seed=2, runtime=RT)
    assert np.array_equal(a.results[0].runs[0].confusion, b.results[0].runs[0].confusion)


def test_approximate_search_reports_recall(blocks: tuple) -> None:
    memory, query = blocks
    result = hummingbird(
        RandomExtractor(4, 16, seed=1),
        memory,
        query,
        _cfg(nn=NnBackend.faiss_hnsw),
        device=CPU,
        seed=0, runtime=RT)
    assert result.nn_backend.startswith("faiss-hnsw")
    assert result.recall_at_k is not None and 0.3 < result.recall_at_k <= 1.0


def test_patch_histograms_to_class0_and_drop() -> None:
    mask = torch.tensor(
        [[[1, 1, 2, 2], [1, 255, 2, 0], [3, 3, 0, 0], [3, 3, 0, 255]]], dtype=torch.uint8
    )
    kw = dict(patch=2, num_classes=4, ignore_index=255)
    to0 = patch_histograms(mask, memory_ignore=MemoryIgnore.to_class0, **kw)
    assert to0.tolist() == [[[1, 3, 0, 0], [1, 0, 3, 0], [0, 0, 0, 4], [4, 0, 0, 0]]]
    drop = patch_histograms(mask, memory_ignore=MemoryIgnore.drop, **kw)
    assert drop.tolist() == [[[0, 3, 0, 0], [1, 0, 3, 0], [0, 0, 0, 4], [3, 0, 0, 0]]]
    with pytest.raises(ValueError, match="outside"):
        patch_histograms(
            torch.full((1, 4, 4), 7, dtype=torch.uint8), memory_ignore=MemoryIgnore.drop, **kw
        )


def test_rarity_sampling_prefers_patches_with_rare_classes() -> None:
    # one view, 4 patches: three hold only class 1 (f_1 = 3), one holds class 2 (f_2 = 1)
    counts = torch.tensor([[[0, 4, 0], [0, 4, 0], [0, 0, 4], [0, 4, 0]]])
    views, patches = select_patches(counts, torch.ones(1, 4), 1)
    assert views.tolist() == [0] and patches.tolist() == [2]
    # u breaks the order: score = u · Σ f_c
    views, patches = select_patches(counts, torch.tensor([[0.9, 0.1, 0.9, 0.9]]), 1)
    assert patches.tolist() == [1]
    # unlabelled patches (drop mode) score +inf and are never stored, even in store-all mode
    counts = torch.tensor([[[0, 4, 0], [0, 0, 0], [0, 0, 4]]])
    assert sorted(select_patches(counts, torch.ones(1, 3), 2)[1].tolist()) == [0, 2]
    assert sorted(select_patches(counts, torch.ones(1, 3), 3)[1].tolist()) == [0, 2]
    assert select_patches(counts, torch.ones(1, 3), None)[1].tolist() == [0, 2]


def test_patches_per_view_matches_the_spec_bank_sizes() -> None:
    m = 10_240_000
    assert patches_per_view(m, 10_582, 2, 1296) == 483  # VOC 1/1, E = 2
    assert patches_per_view(m, 10_582, 1, 1296) == 967  # VOC 1/1, E = 1
    assert patches_per_view(m, 20_210, 2, 1296) == 253  # ADE20K 1/1
    assert patches_per_view(102_400, 10_582, 2, 1296) == 4
    assert patches_per_view(m, 1_320, 2, 1296) is None  # low-shot: store all
    assert patches_per_view(None, 10, 2, 49) is None
    assert patches_per_view(5, 10, 2, 49) == 1  # at least one patch per view


def test_derived_subsets_are_seeded_sorted_and_sized() -> None:
    ids = [f"id{i:03d}" for i in range(50)][::-1]
    a = derived_subset(ids, Fraction(1, 8), 42)
    assert a == derived_subset(ids, Fraction(1, 8), 42) and a == sorted(a)
    assert len(a) == math.ceil(50 / 8) and set(a) <= set(ids)
    assert a != derived_subset(ids, Fraction(1, 8), 400)
    assert len(derived_subset(ids[:3], Fraction(1, 128), 1)) == 1


def test_memory_indices_from_given_ids_and_errors(blocks: tuple) -> None:
    memory, _ = blocks
    idx, derived = memory_indices(memory, "1/8", 42, {"1/8": {42: [memory.ids[5], memory.ids[2]]}})
    assert (idx, derived) == ([2, 5], False)
    assert memory_indices(memory, "1/1", 42, None) == (list(range(len(memory))), False)
    with pytest.raises(ValueError, match="unknown"):
        memory_indices(memory, "1/8", 42, {"1/8": {42: ["nope"]}})
    with pytest.raises(ValueError, match="not a fraction"):
        memory_indices(memory, "half", 42, None)


def test_transfer_labels_softmax_weights() -> None:
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    sims = torch.tensor([[0.9, 0.88]])
    out = transfer_labels(sims, torch.tensor([[0, 1]]), labels, temperature=0.02)
    w0 = 1 / (1 + math.exp(-0.02 / 0.02))
    assert out.tolist()[0] == pytest.approx([w0, 1 - w0], abs=1e-6)
    counts = torch.tensor([[4, 0], [0, 4], [2, 2]], dtype=torch.int16)
    assert torch.allclose(transfer_labels(sims, torch.tensor([[0, 1]]), counts, 0.02), out)


def test_loader_workers_do_not_change_numbers(blocks: tuple) -> None:
    memory, query = blocks
    a = hummingbird(_noisy_colours(), memory, query, _cfg(), device=CPU, seed=0, runtime=RT)
    b = hummingbird(
        _noisy_colours(), memory, query, _cfg(), device=CPU, seed=0, num_workers=2, runtime=RT
    )
    assert np.array_equal(a.results[0].runs[0].confusion, b.results[0].runs[0].confusion)


@pytest.mark.gpu
def test_cuda_run_matches_cpu(blocks: tuple) -> None:
    memory, query = blocks
    cfg = _cfg(fractions=["1/1", "1/4"], subset_seeds=[42, 400])
    cpu = hummingbird(_noisy_colours(), memory, query, cfg, device=CPU, seed=0, runtime=RT)
    gpu = hummingbird(
        _noisy_colours(), memory, query, cfg, device=torch.device("cuda"), seed=0, runtime=RT
    )
    assert gpu.nn_backend == "exact-torch-fp32" and gpu.device.startswith("cuda")
    for f_cpu, f_gpu in zip(cpu.results, gpu.results, strict=True):
        for r_cpu, r_gpu in zip(f_cpu.runs, f_gpu.runs, strict=True):
            assert r_cpu.memory_rows == r_gpu.memory_rows
            assert abs(r_cpu.miou - r_gpu.miou) < 0.02
