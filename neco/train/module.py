"""``NeCoModule``: wiring only (STYLE P7).

Student = backbone (drop-path) + projection head, trained with AdamW; teacher = the same
architecture (drop-path 0), frozen, updated by EMA. All math lives in pure functions:
``neco.method.loss.loss_from_maps`` (ROI-Align, references, similarities, sorting, cross-entropy),
``neco.method.schedules`` (EMA, cosine schedules, parameter groups, trainable blocks).

Per step (method.md §5-§11), with t = optimiser step and T = total steps:

1. schedules: lr_g(t) = final + (lr_g - final)·½(1 + cos πt/T) for every group, weight decay
   0.04 → 0.5 and EMA momentum 0.9995 → 1 on the same cosine;
2. EMA update before the optimiser step (official; ``train.ema_timing``);
3. teacher forward of the global crops under ``no_grad`` (D2), student forward of all crops,
   crops of equal size batched together;
4. loss from maps and crop-overlap boxes (divided by the patch size: token units).

Multi-device (DDP, ``world_size = train.devices x train.num_nodes`` processes): every rank keeps
its **own** reference queue of ``queue_length // world_size`` rows per bank (official
``queue_length // gpus``) and its own reference generator (:func:`reference_seed`; rank 0's is the
single-process stream, so 1-process runs are unchanged). The queue is not a buffer, so DDP's
per-forward buffer broadcast from rank 0 does not overwrite it; the checkpoint holds every rank's
queue and generator state (gathered to rank 0, restored by rank), so a resume is exact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from neco.config import EmaTiming, TeacherHeadInit, TrainConfig
from neco.config.method import LossConfig
from neco.method.heads import ProjectionHead
from neco.method.loss import loss_from_maps, validate_loss_config
from neco.method.optim import apply_trainable_blocks, param_groups, set_weight_decay
from neco.method.references import ReferenceQueue
from neco.method.schedules import cosine_schedule, ema_update
from neco.method.tensor_augment import AugmentDevice, augment_batch, parse_augment_device
from neco.models.fetch import weights_cache_dir
from neco.models.vit import Backbone, build_backbone
from neco.train.datamodule import DecodedBatch


def effective_loss_config(loss: LossConfig, resolved: dict[str, Any]) -> LossConfig:
    """The loss settings with the recipe-resolved queue values filled in.

    ``queue_length`` stays the configured total; each of ``world_size`` devices holds
    ``queue_length // world_size`` rows per bank (:func:`queue_length_per_device`).
    """
    return dataclasses.replace(
        loss,
        queue=bool(resolved["queue"]),
        queue_length=int(resolved["queue_length"]),
        queue_push_per_image=int(resolved["queue_push_per_image"]),
    )


def queue_length_per_device(queue_length: int, world_size: int) -> int:
    """Rows per queue bank on each device: ``queue_length // world_size`` (official)."""
    return int(queue_length) // max(1, int(world_size))


def reference_seed(seed: int, rank: int) -> int:
    """Seed of the reference generator (queue push/sample, in-batch references) of one rank.

    Rank 0 keeps the single-process stream ``seed + 1``, so a 1-process run draws exactly what
    it always did; every other rank gets an independent stream from ``(seed + 1, rank)``.
    """
    if rank == 0:
        return seed + 1
    return int(np.random.SeedSequence([seed + 1, rank]).generate_state(1)[0])


class NeCoModule(pl.LightningModule):
    """Teacher/student NeCo post-pretraining.

    Args:
        train: the ``train`` section.
        resolved: recipe-resolved values (``neco.models.recipes.resolve_recipe(...)["values"]``).
        seed: seed of the head initialisation and of the reference sampling.
        world_size: number of training processes, ``train.devices x train.num_nodes`` (the
            per-device batch is ``batch_size / world_size``, the per-device queue
            ``queue_length // world_size``); ``setup`` checks it against the Trainer's.
        init_weights: the ``weights`` stage's initial backbone (exported safetensors); None =
            resolve ``train.weights`` / the official source here.
    """

    def __init__(
        self,
        *,
        train: TrainConfig,
        resolved: dict[str, Any],
        seed: int,
        world_size: int,
        init_weights: Path | None = None,
    ) -> None:
        super().__init__()
        self.cfg = train
        self.augment_device = parse_augment_device(train.augment_device)
        self.resolved = dict(resolved)
        self.seed = seed
        self.world_size = max(1, int(world_size))
        self.loss_cfg = effective_loss_config(train.loss, resolved)
        per_device_batch = int(resolved["batch_size"]) // self.world_size
        validate_loss_config(self.loss_cfg, per_device_batch)
        self.queue_length_per_device: int | None = None
        if self.loss_cfg.queue:
            assert self.loss_cfg.queue_length is not None  # validate_loss_config checked it
            per_device = queue_length_per_device(self.loss_cfg.queue_length, self.world_size)
            if per_device_batch * self.loss_cfg.n_refs > per_device:
                raise ValueError(
                    f"train.loss.queue_length = {self.loss_cfg.queue_length} over "
                    f"{self.world_size} processes (train.devices x train.num_nodes) leaves "
                    f"{per_device} rows per device, fewer than the per-device batch "
                    f"{per_device_batch} x train.loss.n_refs {self.loss_cfg.n_refs} = "
                    f"{per_device_batch * self.loss_cfg.n_refs} references; raise queue_length"
                )
            self.queue_length_per_device = per_device

        student = build_backbone(
            train.backbone,
            weights=init_weights if init_weights is not None else train.weights,
            cache_dir=weights_cache_dir(train.weights_cache),
            drop_path_rate=train.drop_path,
            pos_embed_interp=train.pos_embed_interp,
            seed=seed,
        )
        teacher = build_backbone(
            train.backbone,
            weights="random",
            cache_dir=None,
            drop_path_rate=0.0,
            pos_embed_interp=train.pos_embed_interp,
            seed=seed,
        )
        teacher.load_state_dict(student.state_dict())
        self.trainable_blocks = apply_trainable_blocks(
            student.blocks, student, train.trainable_blocks
        )

        dim = student.embed_dim
        head = train.head
        gen = torch.Generator().manual_seed(seed)
        s_head = ProjectionHead(dim, head.hidden_dim, head.out_dim, head.n_layers, generator=gen)
        t_head = ProjectionHead(dim, head.hidden_dim, head.out_dim, head.n_layers, generator=gen)
        if train.teacher_head_init is TeacherHeadInit.COPY:
            t_head.load_state_dict(s_head.state_dict())
        self.student = nn.ModuleDict({"backbone": student, "head": s_head})
        self.teacher = nn.ModuleDict({"backbone": teacher, "head": t_head})
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        # A plain attribute, not a submodule: outside state_dict() and DDP's buffer broadcast.
        self.queue: ReferenceQueue | None = None
        if self.queue_length_per_device is not None:
            self.queue = ReferenceQueue(
                num_banks=len(self.loss_cfg.crops_for_assign),
                queue_length=self.queue_length_per_device,
                dim=head.out_dim,
            )
        # rank 0's stream; other ranks reseed in setup() once their rank is known
        self.generator = torch.Generator().manual_seed(reference_seed(seed, 0))
        self._reference_rank = 0
        self.total_steps = 1
        self.loss_history: list[float] = []
        self._epoch_losses: list[float] = []
        self.first_epoch_mean_loss: float | None = None
        self.last_epoch_mean_loss: float | None = None

    # ---- wiring helpers --------------------------------------------------------------------
    @property
    def student_backbone(self) -> Backbone:
        return self.student["backbone"]  # type: ignore[return-value]

    @property
    def teacher_backbone(self) -> Backbone:
        return self.teacher["backbone"]  # type: ignore[return-value]

    def set_total_steps(self, total: int) -> None:
        """Length T of every schedule (``iters_per_epoch × epochs``)."""
        self.total_steps = max(1, int(total))

    def _maps(self, net: nn.ModuleDict, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Unit-norm head outputs as ``(B, d, h, w)`` maps, one per view; equal sizes batched."""
        out: list[torch.Tensor | None] = [None] * len(views)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            by_size.setdefault((v.shape[-2], v.shape[-1]), []).append(i)
        patch = self.student_backbone.patch_size
        for (h, w), idx in by_size.items():
            x = torch.cat([views[i] for i in idx])
            # (nB, h*w, d), unit norm
            tokens = net["head"](net["backbone"](x, floor_to_patch=True)).float()
            gh, gw = h // patch, w // patch  # 98 px at patch 16: 6x6 tokens (official)
            maps = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
            for j, chunk in zip(idx, maps.chunk(len(idx)), strict=True):
                out[j] = chunk
        return [m for m in out if m is not None]

    def _schedules(self) -> dict[str, float]:
        t, total = int(self.global_step), self.total_steps
        t = min(t, total - 1)
        return {
            "momentum": cosine_schedule(self.cfg.momentum_start, self.cfg.momentum_end, t, total),
            "weight_decay": cosine_schedule(
                self.cfg.weight_decay, self.cfg.weight_decay_end, t, total
            ),
            "lr_scale_t": float(t),
        }

    def _set_lr(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        t, total = min(int(self.global_step), self.total_steps - 1), self.total_steps
        lrs = {}
        for group in optimizer.param_groups:
            group["lr"] = cosine_schedule(group["initial_lr"], self.cfg.final_lr, t, total)
            lrs[group["name"]] = group["lr"]
        return lrs

    # ---- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the process count and give this rank its own reference generator."""
        world = int(self.trainer.world_size)
        if world != self.world_size:
            raise ValueError(
                f"NeCoModule was built for {self.world_size} processes (train.devices x "
                f"train.num_nodes) but the Trainer runs {world}; the per-device batch and queue "
                "would be wrong"
            )
        rank = int(self.global_rank)
        if rank != self._reference_rank:
            self.generator.manual_seed(reference_seed(self.seed, rank))
            self._reference_rank = rank

    def on_fit_start(self) -> None:
        if self.queue is not None:
            self.queue.to(self.device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = param_groups(
            self.student["backbone"],
            self.student["head"],
            weight_decay=self.cfg.weight_decay,
            lr_backbone=float(self.resolved["lr_backbone"]),
            lr_head=self.cfg.lr_heads,
        )
        for g in groups:
            g["initial_lr"] = g["lr"]
        return torch.optim.AdamW(groups)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views, gc, all_boxes = batch
        optimizer = self.optimizers()
        if isinstance(optimizer, list):
            raise TypeError("NeCoModule.training_step: expected one optimizer, got a list")
        opt = optimizer.optimizer
        sched = self._schedules()
        lrs = self._set_lr(opt)
        set_weight_decay(opt, sched["weight_decay"])
        if self.cfg.ema_timing is EmaTiming.BEFORE_STEP:
            ema_update(self.teacher, self.student, sched["momentum"])

        cfa = list(self.loss_cfg.crops_for_assign)
        student_maps = self._maps(self.student, list(views))
        if self.loss_cfg.use_teacher:
            with torch.no_grad():
                teacher_maps = self._maps(self.teacher, [views[g] for g in cfa])
        else:
            # Ablation (official): a second student forward of the global crops, with its own
            # drop-path draw, gives the targets (Q is sorted from it without grad in the loss) and,
            # in-batch, the references, which then keep their gradient as in the official code.
            teacher_maps = self._maps(self.student, [views[g] for g in cfa])
        patch = float(self.student_backbone.patch_size)
        loss, stats = loss_from_maps(
            student_maps=student_maps,
            teacher_maps=teacher_maps,
            boxes_teacher=gc[:, cfa].float() / patch,
            boxes_student=all_boxes[:, :, cfa].float() / patch,
            cfg=self.loss_cfg,
            queue=self.queue,
            generator=self.generator,
        )
        self._momentum = sched["momentum"]
        bs = views[0].shape[0]
        self.log(
            "train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=bs,
            sync_dist=True,
        )  # mean over DDP ranks
        self.log(
            "train/lr_backbone", lrs["backbone_decay"], on_step=True, on_epoch=False, batch_size=bs
        )
        self.log("train/lr_heads", lrs["head_decay"], on_step=True, on_epoch=False, batch_size=bs)
        self.log(
            "train/weight_decay", sched["weight_decay"], on_step=True, on_epoch=False, batch_size=bs
        )
        self.log("train/momentum", sched["momentum"], on_step=True, on_epoch=False, batch_size=bs)
        for key, value in stats.items():
            if key != "loss" and torch.is_tensor(value) and value.numel() == 1:
                self.log(
                    f"train/{key}", value.detach().float(), on_step=True, on_epoch=False,
                    batch_size=bs,
                )
        loss_value = float(loss.detach())
        self.loss_history.append(loss_value)
        self._epoch_losses.append(loss_value)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Official clipping: only the non-bias, non-1-D student parameters (method.md §11)."""
        if self.cfg.grad_clip is None:
            return
        params = [
            p
            for n, p in self.student.named_parameters()
            if p.grad is not None and not n.endswith(".bias") and p.ndim > 1
        ]
        torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``train.augment_device: accelerator``: cut and augment the decoded batch on the device.

        Runs after the transfer and outside autocast (fp32); the draws and boxes come from the
        workers (:class:`~neco.train.datamodule.DecodedBatch`), so the result depends only on
        ``(seed, epoch, image)``. A CPU-augmented batch passes through unchanged.
        """
        decoded = isinstance(batch, DecodedBatch)
        if decoded != (self.augment_device is AugmentDevice.ACCELERATOR):
            raise ValueError(
                f"train.augment_device={self.augment_device.value} but the loader delivers "
                f"{'decoded images' if decoded else 'augmented views'}; build the data module "
                "with the same augment_device"
            )
        if not decoded:
            return batch
        with torch.no_grad():
            views = augment_batch(batch.images, batch.rects, batch.sizes, batch.draws)
        return views, batch.gc, batch.all_

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.cfg.ema_timing is EmaTiming.AFTER_STEP:
            ema_update(self.teacher, self.student, self._momentum)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Reseed the global torch RNG (student drop-path) from ``(seed, step, rank)``.

        Lightning checkpoints hold no RNG state, and Lightning itself draws from the global RNG
        a different number of times in a resumed run (DataLoader iterators are created in
        another order), so without this a resumed run draws other drop-path masks than the
        uninterrupted one. ``torch.manual_seed`` also seeds every CUDA device.
        """
        torch.manual_seed(step_rng_seed(self.seed, int(self.global_step), int(self.global_rank)))

    def on_train_epoch_end(self) -> None:
        if self._epoch_losses:
            mean = sum(self._epoch_losses) / len(self._epoch_losses)
            if self.first_epoch_mean_loss is None:
                self.first_epoch_mean_loss = mean
            self.last_epoch_mean_loss = mean
            self.log("train/epoch_loss", mean, on_step=False, on_epoch=True, sync_dist=True)
        self._epoch_losses = []

    def _gather_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(world_size, *tensor.shape)`` CPU copy: every rank's ``tensor``, in rank order.

        A collective under DDP: Lightning builds a checkpoint (``dump_checkpoint``) on every
        rank, and only rank 0 writes it.
        """
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered = self.all_gather(tensor.to(self.device))
            assert isinstance(gathered, torch.Tensor)
            return gathered.detach().cpu().reshape(self.world_size, *tensor.shape)
        return tensor.detach().cpu().clone().unsqueeze(0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Per-rank state that is not in ``state_dict``: reference generator and queue."""
        checkpoint["neco_world_size"] = self.world_size
        checkpoint["neco_generator_states"] = self._gather_ranks(self.generator.get_state())
        if self.queue is not None:
            checkpoint["neco_queue"] = {
                k: self._gather_ranks(v) for k, v in self.queue.state_dict().items()
            }
        checkpoint["neco_loss_history"] = list(self.loss_history)
        checkpoint["neco_epoch_mean_loss"] = [self.first_epoch_mean_loss, self.last_epoch_mean_loss]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore this rank's generator and queue from :meth:`on_save_checkpoint`'s entries."""
        world = checkpoint.get("neco_world_size")
        if world != self.world_size:
            raise ValueError(
                f"checkpoint was written by {world} processes, this run has {self.world_size} "
                "(train.devices x train.num_nodes): its per-rank queues cannot be restored"
            )
        rank = int(self.global_rank)
        # clone: a row of the (world, n) tensor is a view at an offset, which set_state misreads
        self.generator.set_state(checkpoint["neco_generator_states"][rank].cpu().clone())
        self._reference_rank = rank
        if self.queue is not None:
            self.queue.load_state_dict({k: v[rank] for k, v in checkpoint["neco_queue"].items()})
        self.loss_history = list(checkpoint.get("neco_loss_history", []))
        first, last = checkpoint.get("neco_epoch_mean_loss", [None, None])
        self.first_epoch_mean_loss, self.last_epoch_mean_loss = first, last


def step_rng_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for one optimiser step on one rank (drop-path masks)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
