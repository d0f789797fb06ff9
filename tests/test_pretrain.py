"""``neco.pretrain``: target normalisation, losses, views and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neco.config import ConfigError
from neco.config.method import CropConfig
from neco.config.pretrain import (
    ExportNet,
    Objective,
    PretrainConfig,
    PretrainHeadConfig,
    TargetNorm,
)
from neco.data.sources.synthetic_images import SyntheticConfig
from neco.models.export import load_exported
from neco.models.vit import Backbone
from neco.pretrain.dino_loss import (
    centred_targets,
    distillation_ce,
    info_nce,
    sinkhorn_targets,
    target_stats,
)
from neco.pretrain.images import render_images
from neco.pretrain.maskfeat import (
    hog_targets,
    masked_hog_loss,
    masked_tokens,
    random_token_mask,
    standardise,
)
from neco.pretrain.run import run_pretraining
from neco.pretrain.views import make_batch, single_views

GENERATOR = SyntheticConfig(
    seed=0, num_train=4, num_val=1, sizes=[48, 64], objects_min=1, objects_max=2,
    object_frac_min=0.3, object_frac_max=0.6, texture_period_min=6.0, texture_period_max=12.0,
    colour_min_sv=0.3, colour_min_contrast=100.0, background_cells=4, boundary_width=2,
    difficult_prob=0.0, noise_sigma=8.0, jpeg_quality=95,
)  # fmt: skip


def tiny_config(objective: Objective, **kw: object) -> PretrainConfig:
    cfg = PretrainConfig(
        seed=0, generator_seed=1, num_images=8, steps=3, batch_size=4,
        lr=1e-3, min_lr=1e-5, warmup_steps=1, weight_decay=0.04, weight_decay_end=0.4,
        momentum_start=0.9, momentum_end=1.0, grad_clip=3.0, drop_path=0.0, global_size=32,
        local_size=16, num_local=2, global_scale=[0.4, 1.0], local_scale=[0.1, 0.4],
        jitter_strength=1.0, blur_strength=1.0,
        head=PretrainHeadConfig(hidden_dim=16, bottleneck_dim=8, n_layers=2,
                                num_prototypes_cls=8, num_prototypes_patch=8),
        student_temp=0.1, teacher_temp=0.04, teacher_temp_start=0.04,
        teacher_temp_warmup_steps=0, objective=objective, contrastive_temp=0.2,
        target_norm=TargetNorm.SINKHORN, center_momentum=0.9, sinkhorn_iters=3, cls_weight=1.0,
        patch_weight=1.0, roi_k=2, freeze_prototypes_steps=0, export=ExportNet.TEACHER,
        mask_ratio=0.4, hog_cell=8, hog_bins=9, hog_eps=2.0, visible_weight=1.0,
    )  # fmt: skip
    return dataclasses.replace(cfg, **kw)  # type: ignore[arg-type]


def test_sinkhorn_equipartition() -> None:
    logits = torch.randn(64, 8)
    q = sinkhorn_targets(logits, temp=0.5, iters=50)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((8,), 8.0), atol=1e-2)  # N / K each


def test_identical_rows_give_uniform_sinkhorn_targets() -> None:
    """The collapse mode of Sinkhorn distillation: identical samples have uniform targets."""
    q = sinkhorn_targets(torch.randn(1, 16).repeat(32, 1), temp=0.04, iters=3)
    assert target_stats(q)["entropy"] == pytest.approx(1.0, abs=1e-4)


def test_centred_targets_sharpen() -> None:
    logits = torch.randn(16, 8)
    sharp = target_stats(centred_targets(logits, torch.zeros(8), temp=0.01))["entropy"]
    soft = target_stats(centred_targets(logits, torch.zeros(8), temp=1.0))["entropy"]
    assert sharp < soft <= 1.0


def test_distillation_ce_minimum_is_the_target_entropy() -> None:
    t = torch.softmax(torch.randn(5, 7), -1)
    entropy = -(t * t.log()).sum(-1).mean()
    at_target = distillation_ce(t, t.log() * 0.1, temp=0.1)  # student softmax equals t
    assert at_target == pytest.approx(float(entropy), abs=1e-5)
    assert distillation_ce(t, torch.zeros(5, 7), temp=0.1) > at_target


def test_info_nce_decreases_and_masks_own_image() -> None:
    torch.manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    q = torch.randn(12, 8, requires_grad=True)
    ids = torch.arange(6).repeat_interleave(2)
    opt = torch.optim.SGD([q], lr=0.5)
    losses = []
    for _ in range(30):
        loss, _ = info_nce(torch.nn.functional.normalize(q, dim=-1), keys, ids, temp=0.2)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    # a query equal to its image's other key scores only against other images' keys
    _, acc = info_nce(keys[[1, 0]], keys[:2], torch.tensor([0, 0]), temp=0.2)
    assert acc == 1.0


def test_render_images_are_disjoint_from_the_demo_seed() -> None:
    with pytest.raises(ConfigError, match="generator_seed"):
        render_images(GENERATOR, seed=0, num_images=2)
    a = render_images(GENERATOR, seed=1, num_images=2)
    b = render_images(GENERATOR, seed=1, num_images=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].dtype == torch.uint8 and a[0].shape[0] == 3


def test_views_and_boxes() -> None:
    images = render_images(GENERATOR, seed=1, num_images=3)
    crops = CropConfig(num_global=2, num_local=2, global_scale=[0.4, 1.0],
                       local_scale=[0.1, 0.4], ratio=[0.75, 4 / 3], min_intersection=0.01,
                       second_global_factor=2.0, max_retries=1000, global_size=32,
                       local_size=16)  # fmt: skip
    batch = make_batch(images, [0, 2], crops=crops, jitter_strength=1.0, blur_strength=1.0,
                       rng=np.random.default_rng(0), gen=torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in batch.views] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 2
    assert batch.boxes_teacher.shape == (2, 2, 4, 4) and batch.boxes_student.shape == (2, 4, 2, 4)
    assert all(torch.isfinite(v).all() for v in batch.views)


def _stripes(angle: float, size: int = 32, period: float = 6.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    u = xx * math.cos(angle) + yy * math.sin(angle)
    return (torch.remainder(u, period) < period / 2).float().expand(3, size, size)


def test_hog_peaks_at_the_gradient_orientation() -> None:
    """Vertical stripes (gradient along x, orientation 0) fill bin 0; horizontal ones the
    middle bin (pi/2); a flat image has a zero histogram."""
    imgs = torch.stack([_stripes(0.0), _stripes(math.pi / 2), torch.full((3, 32, 32), 0.5)])
    h = hog_targets(imgs, patch=16, cell=8, bins=9, eps=0.1).view(3, 4, 4, 9).sum((1, 2))
    assert int(h[0].argmax()) in (0, 8) and int(h[1].argmax()) == 4
    assert float(h[2].abs().max()) == 0.0
    norms = hog_targets(imgs, patch=16, cell=8, bins=9, eps=0.1).norm(dim=-1)
    assert torch.all(norms < 1.0) and float(norms[0].min()) > 0.9


def test_token_mask_counts_and_no_mask_is_the_plain_forward() -> None:
    mask = random_token_mask(3, 16, 0.4, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [6, 6, 6]
    backbone = load_exported_random()
    x = torch.randn(2, 3, 32, 32)
    none = torch.zeros(2, 4, dtype=torch.bool)
    assert torch.allclose(masked_tokens(backbone, x, none, torch.zeros(192)), backbone(x))
    all_ = torch.ones(2, 4, dtype=torch.bool)
    a = masked_tokens(backbone, x, all_, torch.zeros(192))
    b = masked_tokens(backbone, torch.randn(2, 3, 32, 32), all_, torch.zeros(192))
    assert torch.allclose(a, b, atol=1e-6)  # fully masked: the pixels are never seen


def load_exported_random() -> Backbone:
    from neco.models.vit import build_backbone

    return build_backbone("vit_tiny_demo", weights="random", cache_dir=None, drop_path_rate=0.0,
                          pos_embed_interp="official", seed=0)  # fmt: skip


def test_masked_hog_loss_floor_and_standardise() -> None:
    t = standardise(torch.randn(4, 9, 5) * 0.1 + 3.0)
    assert torch.allclose(t.mean((0, 1)), torch.zeros(5), atol=1e-5)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[:, :3] = True
    loss, floor = masked_hog_loss(torch.zeros_like(t), t, mask)
    assert float(loss) >= floor - 1e-5
    perfect, _ = masked_hog_loss(t, t, mask, visible_weight=1.0)
    assert float(perfect) == pytest.approx(0.0, abs=1e-9)


def test_single_views_shape_and_range() -> None:
    images = render_images(GENERATOR, seed=1, num_images=3)
    x = single_views(images, [0, 2], size=32, scale=(0.3, 1.0), jitter_strength=0.5,
                     blur_strength=1.0, rng=np.random.default_rng(0),
                     gen=torch.Generator().manual_seed(0))  # fmt: skip
    assert x.shape == (2, 3, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_masked_hog_pretraining_learns(tmp_path: Path) -> None:
    """Few images, many steps: the masked-HOG loss falls below the mean-prediction floor."""
    cfg = tiny_config(Objective.MASKED_HOG, steps=30, num_images=4, batch_size=4, lr=2e-3,
                      warmup_steps=2, jitter_strength=0.0, blur_strength=0.0,
                      global_scale=[0.9, 1.0])  # fmt: skip
    curve = tmp_path / "c.tsv"
    summary = run_pretraining(cfg, backbone="vit_tiny_demo", generator=GENERATOR,
                              out_path=tmp_path / "b.safetensors", curve_path=curve)
    rows = [line.split("\t") for line in curve.read_text().splitlines()]
    floor = float(np.mean([float(r[rows[0].index("loss_cls")]) for r in rows[1:]]))
    # masked + visible terms (visible_weight 1): predicting the mean scores 2 x the floor
    assert summary["loss_last"] < 0.85 * 2 * floor < summary["loss_first"]
    load_exported(tmp_path / "b.safetensors", "vit_tiny_demo", pos_embed_interp="official")


@pytest.mark.parametrize("objective", [Objective.CONTRASTIVE, Objective.DISTILLATION])
def test_run_pretraining_writes_a_loadable_backbone(objective: Objective, tmp_path: Path) -> None:
    out, curve = tmp_path / "init.safetensors", tmp_path / "curve.tsv"
    summary = run_pretraining(tiny_config(objective), backbone="vit_tiny_demo",
                              generator=GENERATOR, out_path=out, curve_path=curve)
    assert math.isfinite(summary["loss_last"]) and summary["steps"] == 3
    assert len(curve.read_text().splitlines()) == 1 + 3
    backbone = load_exported(out, "vit_tiny_demo", pos_embed_interp="official")
    assert backbone(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 192)


def test_contrastive_loss_decreases_on_a_tiny_problem(tmp_path: Path) -> None:
    """Few images, many steps over them: the contrastive objective must fit them."""
    cfg = tiny_config(Objective.CONTRASTIVE, steps=25, num_images=4, batch_size=4, lr=2e-3,
                      warmup_steps=2, cls_weight=0.0, jitter_strength=0.0, blur_strength=0.0)
    summary = run_pretraining(cfg, backbone="vit_tiny_demo", generator=GENERATOR,
                              out_path=tmp_path / "b.safetensors")
    assert summary["loss_last"] < summary["loss_first"] - 0.1


def test_config_rejects_the_demo_seed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run_pretraining(tiny_config(Objective.CONTRASTIVE, generator_seed=0),
                        backbone="vit_tiny_demo", generator=GENERATOR,
                        out_path=tmp_path / "x.safetensors")
