"""Tests for ``neco.method.schedules``: schedules, EMA, param groups, trainable blocks
(§4, §10, §11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neco.method.heads import ProjectionHead
from neco.method.optim import apply_trainable_blocks, param_groups, set_weight_decay
from neco.method.schedules import cosine_schedule, ema_update

torch.set_num_threads(1)


def tiny_vit() -> nn.Module:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    return timm_vit.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=3,
        num_heads=2,
        init_values=1.0,
        reg_tokens=2,
        num_classes=0,
        dynamic_img_size=True,
    )


def test_cosine_schedule_matches_dino_formula() -> None:
    start, end, total = 0.9995, 1.0, 37
    # DINO utils.cosine_scheduler without warm-up: iters = arange(T), value over iters / T.
    iters = np.arange(total)
    dino = end + 0.5 * (start - end) * (1 + np.cos(np.pi * iters / len(iters)))
    ours = [cosine_schedule(start, end, t, total) for t in range(total)]
    assert np.allclose(ours, dino, rtol=0, atol=1e-15)
    assert cosine_schedule(start, end, 0, total) == start
    last = cosine_schedule(0.04, 0.5, total - 1, total)
    assert last == pytest.approx(
        0.5 + 0.5 * (0.04 - 0.5) * (1 + math.cos(math.pi * (total - 1) / total))
    )
    assert 0.49 < last < 0.5
    for bad in (-1, total):
        with pytest.raises(ValueError, match="outside"):
            cosine_schedule(start, end, bad, total)


def test_ema_update_extremes_and_formula() -> None:
    torch.manual_seed(0)
    student, teacher = (
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
    )
    student[1].running_mean.fill_(0.7)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)  # buffers copied
    ema_update(teacher, student, 0.9)
    for old, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * old + 0.1 * s, atol=1e-7)
    student[0].weight.requires_grad_(False)  # frozen parameters are updated too
    ema_update(teacher, student, 0.0)
    assert all(
        torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3)), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, 1.5)


def test_param_groups_partition_with_decay_rule() -> None:
    backbone = tiny_vit()
    head = ProjectionHead(16, 32, 8, 3, generator=torch.Generator().manual_seed(0))
    groups = param_groups(backbone, head, weight_decay=0.04, lr_backbone=1e-5, lr_head=1e-4)
    assert [g["name"] for g in groups] == [
        "backbone_decay",
        "backbone_no_decay",
        "head_decay",
        "head_no_decay",
    ]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for m in (backbone, head) for p in m.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == {id(p) for p in trainable}
    by_name = dict(backbone.named_parameters())
    decay = {id(p) for p in groups[0]["params"]}
    for name in (
        "pos_embed",
        "cls_token",
        "reg_token",
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
    ):
        assert id(by_name[name]) in decay, name
    for name in (
        "blocks.0.ls1.gamma",
        "norm.weight",
        "blocks.1.mlp.fc1.bias",
        "patch_embed.proj.bias",
    ):
        assert id(by_name[name]) in {id(p) for p in groups[1]["params"]}, name
    assert all(p.ndim == 2 for p in groups[2]["params"]) and all(
        p.ndim == 1 for p in groups[3]["params"]
    )
    assert [g["weight_decay"] for g in groups] == [0.04, 0.0, 0.04, 0.0]
    assert [g["lr"] for g in groups] == [1e-5, 1e-5, 1e-4, 1e-4]
    opt = torch.optim.AdamW(groups)
    set_weight_decay(opt, 0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0, 0.3, 0.0]
    # Frozen parameters are left out.
    apply_trainable_blocks(backbone.blocks, backbone, -1)
    frozen_groups = param_groups(backbone, head, weight_decay=0.04, lr_backbone=1e-5, lr_head=1e-4)
    n_backbone = sum(len(g["params"]) for g in frozen_groups[:2])
    assert n_backbone == len(list(backbone.blocks[2].parameters()))
    with pytest.raises(ValueError, match="shared|also in"):
        param_groups(backbone, backbone.blocks, weight_decay=0.0, lr_backbone=1.0, lr_head=1.0)


def trainable_blocks_of(backbone: nn.Module) -> list[int]:
    return [
        i for i, b in enumerate(backbone.blocks) if all(p.requires_grad for p in b.parameters())
    ]


def test_apply_trainable_blocks() -> None:
    backbone = tiny_vit()
    non_block = [p for n, p in backbone.named_parameters() if not n.startswith("blocks.")]
    cases = {None: [0, 1, 2], -1: [2], -3: [0, 1, 2], 1: [1, 2], 0: [0, 1, 2], (0, 2): [0, 2]}
    for spec, expected in cases.items():
        arg = list(spec) if isinstance(spec, tuple) else spec
        assert apply_trainable_blocks(backbone.blocks, backbone, arg) == expected
        assert trainable_blocks_of(backbone) == expected
        frozen = [i for i in range(3) if i not in expected]
        assert all(not p.requires_grad for i in frozen for p in backbone.blocks[i].parameters())
        assert all(p.requires_grad is (spec is None) for p in non_block)
    for bad in (3, -4, [0, 0], [3], True):
        with pytest.raises(ValueError, match="train.trainable_blocks"):
            apply_trainable_blocks(backbone.blocks, backbone, bad)
    with pytest.raises(ValueError, match="not modules"):
        apply_trainable_blocks(backbone.blocks, nn.Linear(2, 2), None)
