"""Linear segmentation probe (evaluation.md §2)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from neco.config.evals import (
    Autocast,
    ImageStd,
    LinearConfig,
    MeanOver,
    MetricConfig,
    ModelSelection,
    TrainShuffle,
    UpsampleOrder,
)
from neco.evals.extract import extract_val_features
from neco.evals.linear import head_logits, init_head, linear_probe
from neco.evals.transforms import derived_generator

from .conftest import ColourExtractor, RandomExtractor, block_dataset

CPU = torch.device("cpu")
LINEAR_KEYS = {
    "miou",
    "miou_best_val",
    "miou_last",
    "best_epoch",
    "iou_per_class",
    "variants",
    "curve",
    "settings",
    "fingerprint",
    "seed",
    "n_images",
    "n_pixels",
    "runtime_s",
}


def _cfg(**overrides: object) -> LinearConfig:
    cfg = LinearConfig(
        input_size=64,
        mask_size=32,
        eval_mask_size=32,
        epochs=6,
        batch_size=8,
        lr=1.0,
        momentum=0.9,
        weight_decay=1e-4,
        step_size=5,
        gamma=0.1,
        crop_scale=[0.8, 1.0],
        crop_ratio=[3 / 4, 4 / 3],
        flip_p=0.5,
        model_selection=ModelSelection.best_val,
        train_shuffle=TrainShuffle.shuffle,
        train_drop_last=True,
        upsample_order=UpsampleOrder.features,
        full_val=True,
        metric=MetricConfig(MeanOver.all_classes),
    )
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> tuple[object, object]:
    kw = dict(num_classes=6, extent=(0.5, 0.75))
    return block_dataset(24, seed=0, **kw), block_dataset(12, seed=1, **kw)


def test_separable_features_give_high_miou_and_complete_result(data: tuple) -> None:
    train, val = data
    result = linear_probe(
        ColourExtractor(4), train, val, _cfg(), device=CPU, seed=0, figure_examples=2
    )
    assert result.miou > 0.9
    assert result.miou == result.miou_best_val >= result.miou_last
    assert result.curve[result.best_epoch].val_miou == result.miou_best_val
    assert result.curve[-1].val_miou == result.miou_last
    assert result.curve[-1].train_loss < result.curve[0].train_loss
    assert len(result.iou_per_class) == 6 and result.variants["identity"] == result.miou
    assert result.n_images == 12 and result.n_pixels == int(result.confusion.sum())
    assert result.fingerprint.startswith("linear[S64 m32/32 ep6")
    ex = result.examples[0]
    assert (
        ex.image.shape == (64, 64, 3)
        and ex.gt.shape == (32, 32)
        and ex.preds["pred"].shape == (32, 32)
    )
    assert set(result.head_best_val) == {"weight", "bias"}
    record = result.to_dict()
    assert LINEAR_KEYS <= set(record)
    assert record["settings"]["model_selection"] == "best_val"
    json.dumps(record, allow_nan=False)


def test_same_seed_same_numbers_and_cached_val_features_are_equivalent(data: tuple) -> None:
    train, val = data
    cfg = _cfg(epochs=2)
    state = torch.random.get_rng_state()
    a = linear_probe(ColourExtractor(4), train, val, cfg, device=CPU, seed=3, figure_examples=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG use
    feats = extract_val_features(
        ColourExtractor(4),
        val,
        input_size=64,
        image_std=ImageStd.correct,
        batch_size=5,
        device=CPU,
        autocast=Autocast.none,
    )
    b = linear_probe(
        ColourExtractor(4), train, val, cfg, device=CPU, seed=3, val_features=feats,
        figure_examples=2,
    )
    assert [r.val_miou for r in a.curve] == [r.val_miou for r in b.curve]
    assert [r.train_loss for r in a.curve] == [r.train_loss for r in b.curve]
    c = linear_probe(ColourExtractor(4), train, val, cfg, device=CPU, seed=4, figure_examples=2)
    assert [r.train_loss for r in a.curve] != [r.train_loss for r in c.curve]


def test_model_selection_last_and_reference_loader_modes(data: tuple) -> None:
    train, val = data
    cfg = _cfg(
        epochs=2,
        model_selection=ModelSelection.last,
        train_shuffle=TrainShuffle.reference,
        full_val=False,
        batch_size=5,
        eval_mask_size=64,
    )
    result = linear_probe(
        ColourExtractor(4), train, val, cfg, device=CPU, seed=0, figure_examples=2
    )
    assert result.miou == result.miou_last
    assert result.n_images == 10  # reference drop_last on val: 2 whole batches of 5 out of 12
    assert result.examples[0].gt.shape == (64, 64)  # S-evaluation: GT kept at S
    assert "val=drop_last" in result.fingerprint and "order=reference" in result.fingerprint


def test_random_features_stay_far_below_separable_ones(data: tuple) -> None:
    train, val = data
    result = linear_probe(
        RandomExtractor(4, 8, seed=0), train, val, _cfg(epochs=2), device=CPU, seed=0,
        figure_examples=2,
    )
    assert result.miou < 0.5


def test_upsample_orders_agree() -> None:
    head = init_head(16, 5, derived_generator(0))
    tokens = torch.randn(2, 49, 16, generator=torch.Generator().manual_seed(0))
    a = head_logits(head, tokens, grid=7, size=28, order=UpsampleOrder.features)
    b = head_logits(head, tokens, grid=7, size=28, order=UpsampleOrder.logits)
    assert a.shape == (2, 5, 28, 28)
    assert torch.allclose(a, b, atol=1e-5)


def test_head_init_matches_pytorch_default_bounds_without_global_rng() -> None:
    state = torch.random.get_rng_state()
    head = init_head(64, 21, derived_generator(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    bound = 1 / 64**0.5
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.9 * bound
    assert head.bias is not None and head.bias.abs().max() <= bound
    ref = torch.nn.Conv2d(64, 21, 1)  # default init draws from U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert ref.weight.abs().max() <= bound


def test_bad_inputs_fail_clearly(data: tuple) -> None:
    train, val = data
    with pytest.raises(ValueError, match="not divisible by patch 4"):
        linear_probe(
            ColourExtractor(4), train, val, _cfg(input_size=66), device=CPU, seed=0,
            figure_examples=2,
        )
    with pytest.raises(ValueError, match="val_features shape"):
        linear_probe(
            ColourExtractor(4),
            train,
            val,
            _cfg(),
            device=CPU,
            seed=0,
            val_features=torch.zeros(3, 256, 8), figure_examples=2)


@pytest.mark.gpu
def test_cuda_run_matches_cpu(data: tuple) -> None:
    train, val = data
    cfg = _cfg(epochs=2)
    cpu = linear_probe(ColourExtractor(4), train, val, cfg, device=CPU, seed=0, figure_examples=2)
    gpu = linear_probe(
        ColourExtractor(4), train, val, cfg, device=torch.device("cuda"), seed=0,
        figure_examples=2,
    )
    assert gpu.device.startswith("cuda")
    assert [r.train_loss for r in gpu.curve] == pytest.approx(
        [r.train_loss for r in cpu.curve], rel=1e-3
    )
    assert abs(gpu.miou - cpu.miou) < 0.01
