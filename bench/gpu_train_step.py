"""GPU check: seconds per NeCo training step and peak memory at the ViT-S/14 paper recipe.

Runs ``--steps`` optimiser steps of the NeCo student/teacher step with the paper recipe's shapes
(method.md §12: 2 global crops at 518 px, 4 local crops at 98 px, batch 64, queue 8192, n = 49,
k = 7, 10 pairs) on random weights and random images, with the backbone in bf16 autocast and the
similarity + sort in fp32 (D3). Needs only torch, torchvision and timm (no omegaconf, no dvc), so
it runs on a bare GPU machine::

    python -m bench.gpu_train_step --steps 30 --out bench/results/gpu_train_step.json

The crop-overlap boxes are the full crops (every pair overlaps completely), which has the same
cost as real boxes. The first ``--warmup`` steps are excluded from the timing.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from neco.config.method import LossConfig, Similarity, SortDistribution
from neco.method.heads import ProjectionHead
from neco.method.loss import loss_from_maps
from neco.method.optim import param_groups
from neco.method.references import ReferenceQueue
from neco.method.schedules import cosine_schedule, ema_update
from neco.method.sorting import SortNetwork
from neco.models.vit import build_backbone


def _maps(backbone: torch.nn.Module, head: torch.nn.Module, views: list[torch.Tensor],
          patch: int, bf16: bool) -> list[torch.Tensor]:
    out = []
    groups = (torch.cat(views[:2]), torch.cat(views[2:])) if len(views) > 2 else (torch.cat(views),)
    for x in groups:
        with torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = head(backbone(x, floor_to_patch=True)).float()
        side = x.shape[-1] // patch
        maps = tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[2], side, side)
        out.extend(maps.chunk(x.shape[0] // views[0].shape[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_vits14_xr")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--global-size", type=int, default=518)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_train_step.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench.gpu_train_step needs a CUDA device (or --device cpu for a smoke run)"
        )
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    student = build_backbone(args.backbone, weights="random", cache_dir=None, drop_path_rate=0.1,
                             pos_embed_interp="official", seed=0).to(dev)
    teacher = build_backbone(args.backbone, weights="random", cache_dir=None, drop_path_rate=0.0,
                             pos_embed_interp="official", seed=0).to(dev)
    teacher.load_state_dict(student.state_dict())
    gen = torch.Generator().manual_seed(0)
    s_head = ProjectionHead(student.embed_dim, 2048, 256, 3, generator=gen).to(dev)
    t_head = ProjectionHead(student.embed_dim, 2048, 256, 3, generator=gen).to(dev)
    for p in list(teacher.parameters()) + list(t_head.parameters()):
        p.requires_grad_(False)
    cfg = LossConfig(roi_k=7, n_refs=49, similarity=Similarity.COSINE,
                     sort_network=SortNetwork.BITONIC, sort_distribution=SortDistribution.CAUCHY,
                     art_lambda=0.25, steepness_student=100.0,
                     steepness_teacher=100.0, log_eps=0.0, queue=True, queue_length=8192,
                     queue_push_per_image=10, crops_for_assign=[0, 1], use_teacher=True)
    queue = ReferenceQueue(num_banks=2, queue_length=8192, dim=256).to(dev)
    opt = torch.optim.AdamW(
        param_groups(student, s_head, weight_decay=0.04, lr_backbone=1e-5, lr_head=1e-4)
    )
    patch = student.patch_size
    b, g, loc = args.batch, args.global_size, args.local_size
    sizes = [g, g, loc, loc, loc, loc]
    full = torch.tensor([[0.0, 0.0, s, s] for s in sizes], device=dev)
    boxes_t = full.view(1, 1, 6, 4).expand(b, 2, 6, 4) / patch  # (B, A, C, 4) in g's frame
    boxes_s = full.view(1, 6, 1, 4).expand(b, 6, 2, 4) / patch  # (B, C, A, 4) in v's frame
    rng = torch.Generator().manual_seed(1)
    times, losses = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        views = [torch.randn(b, 3, s, s, device=dev) for s in sizes]
        sync()
        t0 = time.perf_counter()
        ema_update(torch.nn.ModuleList([teacher, t_head]), torch.nn.ModuleList([student, s_head]),
                   cosine_schedule(0.9995, 1.0, step, args.steps))
        with torch.no_grad():
            t_maps = _maps(teacher, t_head, views[:2], patch, args.precision == "bf16")
        s_maps = _maps(student, s_head, views, patch, args.precision == "bf16")
        loss, _ = loss_from_maps(student_maps=s_maps, teacher_maps=t_maps, boxes_teacher=boxes_t,
                                 boxes_student=boxes_s, cfg=cfg, queue=queue, generator=rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": args.backbone,
        "batch": b,
        "global_size": g,
        "local_size": loc,
        "precision_backbone": args.precision,
        "precision_sort": "fp32",
        "steps_timed": len(times),
        "s_per_step_mean": sum(times) / len(times),
        "s_per_step_min": min(times),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss_first_last": [losses[0], losses[-1]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
