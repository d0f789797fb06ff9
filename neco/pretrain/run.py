"""``run_pretraining``: DINO + dense aligned-patch self-distillation of a randomly initialised ViT.

Per step t of T (teacher = EMA of the student, frozen, drop-path 0):

1. schedules: lr linear warm-up then cosine to ``min_lr``; weight decay, EMA momentum on
   cosines (``neco.method.schedules.cosine_schedule``); teacher temperature linear warm-up;
2. a batch of images drawn without replacement from the rendered pool; 2 global and
   ``num_local`` local crops each (``neco.pretrain.views``);
3. teacher forward of the globals under ``no_grad``, student forward of every view; class token
   and patch tokens after the final norm;
4. class-token loss (DINO): every global's target against every other view's student logits;
   patch loss: for each (global g, view v != g) the teacher tokens of g and the student tokens
   of v ROI-aligned on their overlap (``neco.method.roi.align_pairs``, k x k each), the student
   predicting the teacher's target for the same image location;
5. AdamW step (gradient clip), then the EMA update (DINO's order) and the centre update.

Outputs: the exported backbone (``neco.models.export.export_backbone``, the format of
``models/init/init_backbone.safetensors``) and the loss curve (TSV, one row per step), plus the
returned summary.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neco.config import ConfigError
from neco.config.method import CropConfig
from neco.config.pretrain import ExportNet, Objective, PretrainConfig, TargetNorm
from neco.data.sources.synthetic_images import SyntheticConfig
from neco.io import write_text
from neco.method.roi import align_pairs
from neco.method.schedules import cosine_schedule, ema_update
from neco.models.export import export_backbone
from neco.models.vit import Backbone, build_backbone
from neco.pretrain.dino_head import DinoHead
from neco.pretrain.dino_loss import (
    centred_targets,
    distillation_ce,
    info_nce,
    sinkhorn_targets,
    target_stats,
    update_center,
)
from neco.pretrain.images import render_images
from neco.pretrain.maskfeat import (
    MaskedHogHead,
    hog_targets,
    masked_hog_loss,
    masked_tokens,
    random_token_mask,
    standardise,
)
from neco.pretrain.views import make_batch, normalise, single_views

CURVE_COLUMNS = (
    "step", "loss", "loss_cls", "loss_patch", "lr", "momentum", "teacher_temp",
    "cls_entropy", "cls_marginal_entropy", "patch_entropy", "patch_marginal_entropy", "s",
)  # fmt: skip


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    rest = max(1, cfg.steps - cfg.warmup_steps)
    return cosine_schedule(cfg.lr, cfg.min_lr, step - cfg.warmup_steps, rest)


def teacher_temp_at(cfg: PretrainConfig, step: int) -> float:
    """Linear teacher-temperature warm-up from ``teacher_temp_start`` to ``teacher_temp``."""
    if step >= cfg.teacher_temp_warmup_steps:
        return cfg.teacher_temp
    frac = step / max(1, cfg.teacher_temp_warmup_steps)
    return cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * frac


def validate(cfg: PretrainConfig) -> None:
    """Raise ``ConfigError`` naming the first out-of-range value."""
    checks = [
        ("steps", cfg.steps >= 1), ("batch_size", cfg.batch_size >= 2),
        ("num_images", cfg.num_images >= cfg.batch_size), ("lr", cfg.lr > 0),
        ("momentum_start", 0.0 <= cfg.momentum_start <= cfg.momentum_end <= 1.0),
        ("student_temp", cfg.student_temp > 0), ("teacher_temp", cfg.teacher_temp > 0),
        ("roi_k", cfg.roi_k >= 1), ("num_local", cfg.num_local >= 0),
        ("cls_weight", cfg.cls_weight >= 0 and cfg.cls_weight + cfg.patch_weight > 0),
    ]  # fmt: skip
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"pretrain.{key}={getattr(cfg, key)!r} is out of range")


class _Net(nn.Module):
    """Backbone plus the class-token and patch heads (student and teacher share this shape)."""

    def __init__(self, backbone: Backbone, cls_head: DinoHead, patch_head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head
        self.patch_head = patch_head

    def tokens(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """All tokens ``(B, 1 + h*w, D)`` per view; views of one size in one forward."""
        out: list[torch.Tensor | None] = [None] * len(views)
        by_size: dict[int, list[int]] = {}
        for i, v in enumerate(views):
            by_size.setdefault(int(v.shape[-1]), []).append(i)
        for idx in by_size.values():
            tok = self.backbone.forward_tokens(torch.cat([views[i] for i in idx]))
            for j, chunk in zip(idx, tok.chunk(len(idx)), strict=True):
                out[j] = chunk
        return [t for t in out if t is not None]


def _maps(tokens: list[torch.Tensor], prefix: int) -> list[torch.Tensor]:
    """Patch tokens ``(B, h*w, D)`` (after ``prefix`` tokens) as square maps ``(B, D, h, w)``."""
    maps = []
    for t in tokens:
        p = t[:, prefix:]
        side = int(round(math.sqrt(p.shape[1])))
        maps.append(p.transpose(1, 2).reshape(p.shape[0], p.shape[2], side, side))
    return maps


def _targets(
    cfg: PretrainConfig, logits: torch.Tensor, center: torch.Tensor, temp: float
) -> torch.Tensor:
    if cfg.target_norm is TargetNorm.SINKHORN:
        return sinkhorn_targets(logits, temp, cfg.sinkhorn_iters)
    return centred_targets(logits, center, temp)


def _param_groups(net: nn.Module) -> list[dict[str, Any]]:
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1 or n.endswith(".bias")]
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False,
                                               "weight_decay": 0.0}]  # fmt: skip


def run_pretraining(
    cfg: PretrainConfig,
    *,
    backbone: str,
    generator: SyntheticConfig,
    out_path: Path,
    curve_path: Path | None = None,
    log_every: int = 0,
) -> dict[str, Any]:
    """Pretrain ``backbone`` from its seeded random init; write the backbone and the curve.

    Args:
        cfg: the run.
        backbone: registry key (``vit_tiny_demo``).
        generator: the demo generator block; the pretraining images are it reseeded with
            ``cfg.generator_seed`` (which must differ from ``generator.seed``).
        out_path: exported backbone (``*.safetensors``, the ``weights`` stage's format).
        curve_path: loss curve TSV (:data:`CURVE_COLUMNS`); None = not written.
        log_every: print one line every this many steps (0 = silent).

    Returns:
        Summary: first/last losses (means over the first and last 10% of steps), the collapse
        diagnostics at the end, seconds per step and the total wall time.
    """
    validate(cfg)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    images = render_images(generator, seed=cfg.generator_seed, num_images=cfg.num_images)
    if cfg.objective is Objective.MASKED_HOG:
        return _finish(cfg, _run_masked_hog(cfg, backbone, images, out_path, log_every),
                       curve_path, t_start)
    gen = torch.Generator().manual_seed(cfg.seed)
    student_bb = build_backbone(backbone, weights="random", cache_dir=None,
                                drop_path_rate=cfg.drop_path, pos_embed_interp="official",
                                seed=cfg.seed)  # fmt: skip
    teacher_bb = build_backbone(backbone, weights="random", cache_dir=None,
                                drop_path_rate=0.0, pos_embed_interp="official", seed=cfg.seed)
    teacher_bb.load_state_dict(student_bb.state_dict())
    h, dim = cfg.head, student_bb.embed_dim

    def heads() -> tuple[DinoHead, DinoHead]:
        return (DinoHead(dim, h.hidden_dim, h.bottleneck_dim, h.n_layers, h.num_prototypes_cls,
                         generator=gen),
                DinoHead(dim, h.hidden_dim, h.bottleneck_dim, h.n_layers,
                         h.num_prototypes_patch, generator=gen))  # fmt: skip

    student = _Net(student_bb, *heads())
    teacher = _Net(teacher_bb, *heads())
    teacher.load_state_dict(student.state_dict())  # DINO: the teacher starts as the student
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    opt = torch.optim.AdamW(_param_groups(student), lr=cfg.lr, weight_decay=cfg.weight_decay)
    crops = CropConfig(
        num_global=2, num_local=cfg.num_local, global_scale=list(cfg.global_scale),
        local_scale=list(cfg.local_scale), ratio=[3 / 4, 4 / 3], min_intersection=0.01,
        second_global_factor=2.0, max_retries=1000, global_size=cfg.global_size,
        local_size=cfg.local_size,
    )  # fmt: skip
    rng = np.random.default_rng(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    center_cls = torch.zeros(h.num_prototypes_cls)
    center_patch = torch.zeros(h.num_prototypes_patch)
    prefix = student_bb.num_prefix_tokens
    patch = float(student_bb.patch_size)
    num_views = 2 + cfg.num_local
    rows: list[dict[str, float]] = []
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, step, cfg.steps)
        momentum = cosine_schedule(cfg.momentum_start, cfg.momentum_end, step, cfg.steps)
        temp = teacher_temp_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
            if group["decay"]:
                group["weight_decay"] = wd
        idx = rng.choice(len(images), size=cfg.batch_size, replace=False).tolist()
        batch = make_batch(images, idx, crops=crops, jitter_strength=cfg.jitter_strength,
                           blur_strength=cfg.blur_strength, rng=rng, gen=aug_gen)
        student.train()
        s_tok = student.tokens(batch.views)
        with torch.no_grad():
            t_tok = teacher.tokens(batch.views[:2])

        zero = torch.zeros(())
        loss_cls, loss_patch = zero, zero
        stats: dict[str, float] = {}
        contrastive = cfg.objective is Objective.CONTRASTIVE
        if cfg.cls_weight > 0 and contrastive:
            with torch.no_grad():
                keys = teacher.cls_head.embed(torch.stack([t[:, 0] for t in t_tok]))
            queries = student.cls_head.embed(torch.stack([t[:, 0] for t in s_tok]))
            ids = torch.arange(cfg.batch_size)
            terms, accs = [], []
            for a in range(2):
                for v in range(num_views):
                    if v != a:
                        term, acc = info_nce(queries[v], keys[a], ids, cfg.contrastive_temp)
                        terms.append(term)
                        accs.append(acc)
            loss_cls = torch.stack(terms).mean()
            stats["cls_entropy"] = float(np.mean(accs))  # top-1 accuracy in this mode
        elif cfg.cls_weight > 0:
            with torch.no_grad():
                t_logits = teacher.cls_head(torch.stack([t[:, 0] for t in t_tok]))  # (2, B, K)
                targets = _targets(cfg, t_logits.flatten(0, 1), center_cls, temp)
                targets = targets.view(2, cfg.batch_size, -1)
            s_logits = student.cls_head(torch.stack([t[:, 0] for t in s_tok]))  # (C, B, K)
            terms = [distillation_ce(targets[a], s_logits[v], cfg.student_temp)
                     for a in range(2) for v in range(num_views) if v != a]  # fmt: skip
            loss_cls = torch.stack(terms).mean()
            stats.update({f"cls_{k}": v for k, v in target_stats(targets.flatten(0, 1)).items()})
            if cfg.target_norm is TargetNorm.CENTERING:
                center_cls = update_center(center_cls, t_logits.flatten(0, 1),
                                           cfg.center_momentum)
        if cfg.patch_weight > 0:
            f_s, f_t = align_pairs(
                student_maps=_maps(s_tok, prefix), teacher_maps=_maps(t_tok, prefix),
                boxes_teacher=batch.boxes_teacher / patch,
                boxes_student=batch.boxes_student / patch, crops_for_assign=[0, 1],
                roi_k=cfg.roi_k,
            )  # fmt: skip  # (pairs, B, k*k, D) each
        if cfg.patch_weight > 0 and contrastive:
            with torch.no_grad():
                keys = teacher.patch_head.embed(f_t)  # (pairs, B, k*k, d)
            queries = student.patch_head.embed(f_s)
            ids = torch.arange(cfg.batch_size).repeat_interleave(queries.shape[2])
            terms, accs = [], []
            for p_ in range(queries.shape[0]):
                term, acc = info_nce(queries[p_].flatten(0, 1), keys[p_].flatten(0, 1), ids,
                                     cfg.contrastive_temp)
                terms.append(term)
                accs.append(acc)
            loss_patch = torch.stack(terms).mean()
            stats["patch_entropy"] = float(np.mean(accs))  # top-1 accuracy in this mode
        elif cfg.patch_weight > 0:
            with torch.no_grad():
                t_logits = teacher.patch_head(f_t).flatten(0, 2)
                targets = _targets(cfg, t_logits, center_patch, temp)
            s_logits = student.patch_head(f_s).flatten(0, 2)
            loss_patch = distillation_ce(targets, s_logits, cfg.student_temp)
            stats.update({f"patch_{k}": v for k, v in target_stats(targets).items()})
            if cfg.target_norm is TargetNorm.CENTERING:
                center_patch = update_center(center_patch, t_logits, cfg.center_momentum)
        loss = cfg.cls_weight * loss_cls + cfg.patch_weight * loss_patch
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if step < cfg.freeze_prototypes_steps:
            student.cls_head.prototypes.grad = None
            student.patch_head.prototypes.grad = None
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(teacher, student, momentum)
        row = {"step": float(step), "loss": loss.item(), "loss_cls": loss_cls.item(),
               "loss_patch": loss_patch.item(), "lr": lr, "momentum": momentum,
               "teacher_temp": temp, "s": time.perf_counter() - t0}  # fmt: skip
        for key in CURVE_COLUMNS:
            row.setdefault(key, stats.get(key.removeprefix(""), float("nan")))
        rows.append(row)
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            print(" ".join(f"{k}={row[k]:.4g}" for k in CURVE_COLUMNS), flush=True)

    net = teacher if cfg.export is ExportNet.TEACHER else student
    export_backbone(net.backbone, out_path, record_pos_embed_interp=False)
    return _finish(cfg, rows, curve_path, t_start)


def _run_masked_hog(
    cfg: PretrainConfig, name: str, images: list[torch.Tensor], out_path: Path, log_every: int
) -> list[dict[str, float]]:
    """MaskFeat: the student alone (no teacher), one augmented view per image per step.

    Curve columns: ``loss`` = ``loss_patch`` (masked-patch MSE), ``loss_cls`` = the MSE of
    predicting the batch-mean HOG (the no-information floor), ``s`` seconds per step; the
    entropy and teacher columns are NaN.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    backbone = build_backbone(name, weights="random", cache_dir=None,
                              drop_path_rate=cfg.drop_path, pos_embed_interp="official",
                              seed=cfg.seed)  # fmt: skip
    patch = backbone.patch_size
    out_dim = (patch // cfg.hog_cell) ** 2 * cfg.hog_bins
    head = MaskedHogHead(backbone.embed_dim, out_dim, gen)
    net = nn.ModuleDict({"backbone": backbone, "head": head})
    opt = torch.optim.AdamW(_param_groups(net), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    scale = (float(cfg.global_scale[0]), float(cfg.global_scale[1]))
    rows: list[dict[str, float]] = []
    net.train()
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, step, cfg.steps)
        for group in opt.param_groups:
            group["lr"] = lr
            if group["decay"]:
                group["weight_decay"] = wd
        idx = rng.choice(len(images), size=cfg.batch_size, replace=False).tolist()
        x = single_views(images, idx, size=cfg.global_size, scale=scale,
                         jitter_strength=cfg.jitter_strength, blur_strength=cfg.blur_strength,
                         rng=rng, gen=aug_gen)  # fmt: skip
        target = hog_targets(x, patch=patch, cell=cfg.hog_cell, bins=cfg.hog_bins,
                             eps=cfg.hog_eps)  # fmt: skip
        target = standardise(target)
        mask = random_token_mask(x.shape[0], target.shape[1], cfg.mask_ratio, aug_gen)
        tokens = masked_tokens(backbone, normalise(x), mask, head.mask_token)
        loss, base = masked_hog_loss(head(tokens), target, mask, cfg.visible_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        row = {k: float("nan") for k in CURVE_COLUMNS}
        row.update({"step": float(step), "loss": loss.item(), "loss_patch": loss.item(),
                    "loss_cls": base, "lr": lr, "s": time.perf_counter() - t0})  # fmt: skip
        rows.append(row)
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            print(f"step={step} loss={row['loss']:.4f} mean_floor={base:.4f} lr={lr:.3g} "
                  f"s={row['s']:.2f}", flush=True)  # fmt: skip
    export_backbone(backbone, out_path, record_pos_embed_interp=False)
    return rows


def _finish(
    cfg: PretrainConfig, rows: list[dict[str, float]], curve_path: Path | None, t_start: float
) -> dict[str, Any]:
    """Write the curve; the summary returned by :func:`run_pretraining`."""
    if curve_path is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CURVE_COLUMNS), delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{row[k]:.6g}" for k in CURVE_COLUMNS})
        write_text(curve_path, buf.getvalue())
    tenth = max(1, cfg.steps // 10)
    last = rows[-1]
    return {
        "loss_first": float(np.mean([r["loss"] for r in rows[:tenth]])),
        "loss_last": float(np.mean([r["loss"] for r in rows[-tenth:]])),
        **{k: last[k] for k in CURVE_COLUMNS if "entropy" in k},
        "s_per_step": float(np.mean([r["s"] for r in rows[1:]] or [rows[0]["s"]])),
        "wall_s": time.perf_counter() - t_start,
        "steps": cfg.steps,
    }
