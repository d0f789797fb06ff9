"""``NeCoModule`` wiring: teacher, heads, param groups, queue, schedules, EMA (method.md §4-11)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, default_collate

from neco.config import EmaTiming, TeacherHeadInit
from neco.method.augment import PhotometricParams
from neco.method.loss import loss_from_maps
from neco.method.manifest import ManifestIndex, build_manifest
from neco.models.recipes import resolve_train_config
from neco.train.datamodule import MultiCropDataset
from neco.train.module import NeCoModule, reference_seed
from tests.fixtures.tiny_training import TinySetup, build_tiny

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # Lightning vs torch

SEED = 400
Batch = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return build_tiny(tmp_path_factory.mktemp("tiny_module"))


def collate_batch(tiny: TinySetup, manifest: ManifestIndex, indices: list[int]) -> Batch:
    ds = MultiCropDataset(tiny.images(), manifest, epoch=0,
                          params=PhotometricParams(jitter_strength=1.0, blur_strength=1.0), seed=1)
    return default_collate([ds[i] for i in indices])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def batch(tiny: TinySetup) -> Batch:
    """4 images of the tiny manifest: 2 x (4, 3, 32, 32) globals, 4 x (4, 3, 16, 16) locals."""
    return collate_batch(tiny, ManifestIndex.from_path(tiny.manifest), [0, 1, 2, 3])


def make_module(
    tiny: TinySetup, *, loss: dict[str, Any] | None = None, world_size: int = 1, **changes: Any
) -> NeCoModule:
    train = tiny.train()
    if loss:
        train = replace(train, loss=replace(train.loss, **loss))
    train = replace(train, **changes)
    resolved = resolve_train_config(train, tiny.crops())["values"]
    return NeCoModule(train=train, resolved=resolved, seed=SEED, world_size=world_size)


def fit_steps(
    module: NeCoModule, batch: Batch, steps: int, *, total: int | None = None,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """Train ``steps`` optimiser steps on the same batch (schedules of length ``total``)."""
    module.set_total_steps(total or steps)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=callbacks or [],
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return trainer


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_starts_as_student_and_stays_frozen(tiny: TinySetup, batch: Batch) -> None:
    module = make_module(tiny)
    s0 = clone_state(module.student["backbone"])
    t_state = module.teacher["backbone"].state_dict()
    assert s0.keys() == t_state.keys()
    assert all(torch.equal(s0[k], t_state[k]) for k in s0)
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert all(p.requires_grad for p in module.student.parameters())  # trainable_blocks: null
    # drop-path: student 0.1 at the last block, teacher none (method.md §4)
    assert module.student["backbone"].vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert isinstance(module.teacher["backbone"].vit.blocks[-1].drop_path1, torch.nn.Identity)

    trainer = fit_steps(module, batch, 2)
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(not p.requires_grad for p in module.teacher.parameters())
    teacher_ids = {id(p) for p in module.teacher.parameters()}
    optimised = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert not teacher_ids & {id(p) for p in optimised}
    s1 = module.student["backbone"].state_dict()
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)  # the student trained


@pytest.mark.parametrize("mode", [TeacherHeadInit.INDEPENDENT, TeacherHeadInit.COPY])
def test_teacher_head_init(tiny: TinySetup, mode: TeacherHeadInit) -> None:
    module = make_module(tiny, teacher_head_init=mode)
    s, t = module.student["head"].state_dict(), module.teacher["head"].state_dict()
    weights = [k for k in s if k.endswith("weight")]
    equal = [torch.equal(s[k], t[k]) for k in weights]
    if mode is TeacherHeadInit.COPY:
        assert all(equal)
    else:  # independent random init (official): every weight matrix differs
        assert not any(equal)
    again = make_module(tiny, teacher_head_init=mode)  # seeded: reproducible
    assert all(torch.equal(v, again.teacher["head"].state_dict()[k]) for k, v in t.items())


def test_param_groups(tiny: TinySetup) -> None:
    module = make_module(tiny, lr_backbone=3e-5, lr_heads=2e-4, weight_decay=0.04)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]
    assert [g["lr"] for g in opt.param_groups] == [3e-5, 3e-5, 2e-4, 2e-4]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.04, 0.0, 0.04, 0.0]
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    backbone = dict(module.student["backbone"].named_parameters())
    head = dict(module.student["head"].named_parameters())
    for name, p in backbone.items():
        no_decay = name.endswith(".bias") or p.ndim <= 1
        assert id(p) in ids["backbone_no_decay" if no_decay else "backbone_decay"], name
    for name, p in head.items():
        assert id(p) in ids["head_no_decay" if name.endswith(".bias") else "head_decay"], name
    assert id(backbone["vit.pos_embed"]) in ids["backbone_decay"]  # DINO rule
    assert id(backbone["vit.cls_token"]) in ids["backbone_decay"]
    total = sum(len(v) for v in ids.values())
    assert total == len(backbone) + len(head) == len(set().union(*ids.values()))

    frozen = make_module(tiny, trainable_blocks=[3])  # only block 3 (+ head) trainable
    fgroups = {g["name"]: g for g in frozen.configure_optimizers().param_groups}
    trainable = {id(p) for p in frozen.student.parameters() if p.requires_grad}
    assert {id(p) for g in fgroups.values() for p in g["params"]} == trainable
    block3 = {id(p) for p in frozen.student["backbone"].vit.blocks[3].parameters()}
    head_ids = {id(p) for p in frozen.student["head"].parameters()}
    assert trainable == block3 | head_ids


def test_queue_pushes_teacher_patches_per_bank(tiny: TinySetup, batch: Batch) -> None:
    """Each bank receives min(10·B, L) (here 2·4) teacher patches of *its* global crop a step."""
    module = make_module(tiny)
    queue = module.queue
    assert queue is not None and queue.banks.shape == (2, 64, 16)
    fit_steps(module, batch, 1)
    assert queue.filled.tolist() == [8, 8] and queue.ptr.tolist() == [8, 8]
    views = batch[0]
    with torch.no_grad():  # the teacher is unchanged after the step (EMA runs before it)
        maps = module._maps(module.teacher, [views[0], views[1]])
    tokens = [m.flatten(2).transpose(1, 2).reshape(-1, 16) for m in maps]  # (B*2*2, d)
    for bank, other in ((0, 1), (1, 0)):
        rows = queue.banks[bank, :8]
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(8))
        assert torch.cdist(rows, tokens[bank]).min(dim=1).values.max() < 1e-5
        assert torch.cdist(rows, tokens[other]).min(dim=1).values.max() > 1e-3
    assert (queue.banks[:, 8:] == 0).all()
    fit_steps(module, batch, 1)
    assert queue.filled.tolist() == [16, 16]


class Recorder(pl.Callback):
    """Per step: lr and weight decay of every group and the EMA momentum used."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        groups = trainer.optimizers[0].param_groups
        self.rows.append({
            "t": trainer.global_step - 1,
            "lr": [g["lr"] for g in groups],
            "wd": [g["weight_decay"] for g in groups],
            "momentum": pl_module._momentum,
        })


def cosine(start: float, end: float, t: int, total: int) -> float:
    """DINO's cosine_scheduler without warm-up, written out (method.md §10, §11)."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t / total))


def test_schedules_follow_the_cosine(tiny: TinySetup, batch: Batch) -> None:
    module = make_module(tiny, lr_backbone=1e-4, lr_heads=3e-4, final_lr=0.0, weight_decay=0.04,
                         weight_decay_end=0.5, momentum_start=0.99, momentum_end=1.0)
    rec = Recorder()
    fit_steps(module, batch, 3, total=4, callbacks=[rec])
    assert [r["t"] for r in rec.rows] == [0, 1, 2]
    first = rec.rows[0]
    assert first["lr"] == [1e-4, 1e-4, 3e-4, 3e-4]  # t = 0: the base lr, no warm-up
    assert first["momentum"] == pytest.approx(0.99, rel=1e-15)
    assert first["wd"] == pytest.approx([0.04, 0.0, 0.04, 0.0], rel=1e-15)
    for r in rec.rows:
        t = r["t"]
        lr_b, lr_h = cosine(1e-4, 0.0, t, 4), cosine(3e-4, 0.0, t, 4)
        assert r["lr"] == pytest.approx([lr_b, lr_b, lr_h, lr_h], rel=1e-12)
        wd = cosine(0.04, 0.5, t, 4)
        assert r["wd"] == pytest.approx([wd, 0.0, wd, 0.0], rel=1e-12)
        assert r["momentum"] == pytest.approx(cosine(0.99, 1.0, t, 4), rel=1e-12)
    lrs = [r["lr"][0] for r in rec.rows]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # decays
    assert rec.rows[2]["momentum"] > rec.rows[1]["momentum"] > 0.99


@pytest.mark.parametrize("timing", [EmaTiming.BEFORE_STEP, EmaTiming.AFTER_STEP])
def test_ema_timing(tiny: TinySetup, batch: Batch, timing: EmaTiming) -> None:
    """m = 0.5: before_step gives ½T0 + ½S0 (official), after_step ½T0 + ½S1."""
    module = make_module(tiny, ema_timing=timing, momentum_start=0.5, momentum_end=0.5)
    t0, s0 = clone_state(module.teacher), clone_state(module.student)
    fit_steps(module, batch, 1)
    s1, t1 = clone_state(module.student), clone_state(module.teacher)
    source = s0 if timing is EmaTiming.BEFORE_STEP else s1
    for key in t0:
        torch.testing.assert_close(t1[key], 0.5 * t0[key] + 0.5 * source[key], rtol=0, atol=1e-6)
    changed = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert changed  # the optimizer step moved the student, so the two timings differ
    other = s1 if timing is EmaTiming.BEFORE_STEP else s0
    assert any(not torch.allclose(t1[k], 0.5 * t0[k] + 0.5 * other[k], atol=1e-7) for k in changed)


def test_floor_to_patch_local_crops(tiny: TinySetup) -> None:
    """24-px locals at patch 16 (like 98 px): floored to 1x1 tokens, the extra pixels dropped."""
    module = make_module(tiny).eval()
    gen = torch.Generator().manual_seed(0)
    g, loc = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 24, 24, generator=gen)
    with torch.no_grad():
        maps = module._maps(module.student, [g, loc, loc.clone()])
        cropped = module._maps(module.student, [loc[..., :16, :16]])[0]
    assert maps[0].shape == (2, 16, 2, 2) and maps[1].shape == (2, 16, 1, 1)
    torch.testing.assert_close(maps[1], cropped)
    torch.testing.assert_close(maps[1].norm(dim=1), torch.ones(2, 1, 1))

    images = tiny.images()
    sizes = [(i, w, h) for i, (h, w) in zip(images.ids, images.sizes(), strict=True)]
    df = build_manifest(sizes, epochs=1, seed=SEED, cfg=tiny.crops(), global_size=32, local_size=24)
    batch24 = collate_batch(tiny, ManifestIndex(df), [0, 1, 2, 3])
    assert batch24[0][2].shape == (4, 3, 24, 24)
    assert batch24[2][:, 2:, :, 2:].max() > 16  # boxes reach past the 16 px the tokens cover
    module.train()
    fit_steps(module, batch24, 1)
    assert len(module.loss_history) == 1 and math.isfinite(module.loss_history[0])


@torch.no_grad()
def fixed_loss(module: NeCoModule, batch: Batch) -> float:
    """The step's loss without drop-path and with a fixed reference draw (in-batch mode)."""
    views, gc, all_ = batch
    was_training = module.training
    module.eval()
    cfa = list(module.loss_cfg.crops_for_assign)
    p = float(module.student_backbone.patch_size)
    loss, _ = loss_from_maps(
        student_maps=module._maps(module.student, list(views)),
        teacher_maps=module._maps(module.teacher, [views[g] for g in cfa]),
        boxes_teacher=gc[:, cfa].float() / p,
        boxes_student=all_[:, :, cfa].float() / p,
        cfg=module.loss_cfg,
        queue=None,
        generator=torch.Generator().manual_seed(0),
    )
    module.train(was_training)
    return float(loss)


def test_training_lowers_the_loss_on_a_fixed_batch(tiny: TinySetup, batch: Batch) -> None:
    module = make_module(tiny, lr_backbone=1e-3, lr_heads=1e-3, loss={"queue": False})
    before = fixed_loss(module, batch)
    fit_steps(module, batch, 8, total=8)
    after = fixed_loss(module, batch)
    assert all(math.isfinite(v) for v in module.loss_history)
    assert after < before - 0.05, (before, after, module.loss_history)


def test_module_rejects_a_queue_too_small_for_the_batch(tiny: TinySetup) -> None:
    with pytest.raises(ValueError, match=r"queue_length"):
        make_module(tiny, loss={"queue_length": 8})  # B*n = 4*4 = 16 > 8


def test_state_dict_holds_networks_and_the_checkpoint_the_per_rank_queue(
    tiny: TinySetup, batch: Batch
) -> None:
    """state_dict: student and teacher only. The queue is no buffer (DDP would broadcast it from
    rank 0 every forward); the checkpoint holds it and the reference generator per rank."""
    module = make_module(tiny)
    keys = module.state_dict().keys()
    assert not any(k.startswith("queue") for k in keys)
    assert not any(n.startswith("queue") for n, _ in module.named_buffers())
    assert any(k.startswith("teacher.backbone.") for k in keys)
    assert any(k.startswith("student.head.") for k in keys)
    copy.deepcopy(make_module(tiny))  # picklable/copyable for DDP spawn and checkpoints

    fit_steps(module, batch, 2)
    ckpt: dict[str, Any] = {}
    module.on_save_checkpoint(ckpt)
    assert module.queue is not None and ckpt["neco_world_size"] == 1
    assert ckpt["neco_queue"]["banks"].shape == (1, 2, 64, 16)  # (world, banks, rows, d)
    assert ckpt["neco_queue"]["filled"].tolist() == [[16, 16]]
    assert ckpt["neco_generator_states"].shape[0] == 1
    fresh = make_module(tiny)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.queue is not None
    assert torch.equal(fresh.queue.banks, module.queue.banks)
    assert torch.equal(fresh.generator.get_state(), module.generator.get_state())
    with pytest.raises(ValueError, match="written by 1 processes, this run has 2"):
        make_module(tiny, world_size=2).on_load_checkpoint(ckpt)


def test_each_rank_restores_its_own_queue_and_stream(
    tiny: TinySetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-process checkpoint holds (rank, ...) stacks; rank 1 takes row 1 (a view at an
    offset into the stack, which Generator.set_state must not be given as is)."""
    a, b = make_module(tiny, world_size=2), make_module(tiny, world_size=2)
    b.generator.manual_seed(reference_seed(SEED, 1))
    assert a.queue is not None and b.queue is not None
    b.queue.push(0, torch.ones(5, 16))
    states = [m.queue.state_dict() for m in (a, b)]  # type: ignore[union-attr]
    ckpt: dict[str, Any] = {
        "neco_world_size": 2,
        "neco_generator_states": torch.stack([a.generator.get_state(), b.generator.get_state()]),
        "neco_queue": {k: torch.stack([states[0][k], states[1][k]]) for k in states[0]},
    }
    monkeypatch.setattr(NeCoModule, "global_rank", property(lambda self: 1))
    fresh = make_module(tiny, world_size=2)
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.generator.get_state(), b.generator.get_state())
    assert fresh.queue is not None and fresh.queue.filled.tolist() == [5, 0]
    assert torch.equal(fresh.queue.banks, b.queue.banks)


def test_world_size_splits_the_queue_and_the_reference_streams(tiny: TinySetup) -> None:
    """world = devices x nodes: queue_length // world rows per device (official), and rank 0
    keeps the single-process reference stream (seed + 1) while other ranks get their own."""
    one, two = make_module(tiny), make_module(tiny, world_size=2)
    assert one.queue is not None and one.queue.banks.shape == (2, 64, 16)
    assert two.queue is not None and two.queue.banks.shape == (2, 32, 16)
    assert reference_seed(SEED, 0) == SEED + 1
    single = torch.Generator().manual_seed(SEED + 1)  # the stream before multi-device support
    assert torch.equal(one.generator.get_state(), single.get_state())
    assert len({reference_seed(SEED, r) for r in range(4)}) == 4
    # per device: B/world * n = 2 * 4 = 8 references must fit into queue_length // world
    with pytest.raises(ValueError, match="leaves 6 rows per device"):
        make_module(tiny, world_size=2, loss={"queue_length": 12})
    make_module(tiny, world_size=2, loss={"queue_length": 16})


def test_no_teacher_ablation_trains_from_a_second_student_forward(
    tiny: TinySetup, batch: Batch
) -> None:
    """``use_teacher: false`` must train: targets from a second student forward of the global
    crops (official), not the detached student itself (whose gradient is identically zero)."""
    module = make_module(tiny, lr_backbone=1e-3, lr_heads=1e-3,
                         loss={"queue": False, "use_teacher": False})
    s0 = clone_state(module.student["backbone"])
    calls: list[int] = []
    original = module._maps

    def counting(net: Any, views: Any) -> Any:
        calls.append(len(views))
        return original(net, views)

    module._maps = counting  # type: ignore[method-assign]
    fit_steps(module, batch, 2)
    assert calls[:2] == [6, 2]  # all 6 crops, then the 2 global crops again
    s1 = module.student["backbone"].state_dict()
    moved = max(float((s1[k] - s0[k]).abs().max()) for k in s0)
    assert moved > 1e-6, "the student did not move: zero gradient"
    assert all(p.grad is None for p in module.teacher.parameters())
