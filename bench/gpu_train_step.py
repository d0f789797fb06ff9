"""GPU check (issue 13, part 4): the NeCo loss and the paper-recipe training step on one GPU.

One run measures, in the same process and on the same device:

1. **Loss alone at the paper size** (method.md §14.5): ``neco_loss`` forward + backward from
   features, 10 crop pairs x 64 images x 49 queries x 49 references, d = 256, fp32 with TF32 off
   (D3), for ``diffsort`` (one call per pair, as the official code; skipped when the package is
   missing), the exact sort (``implementation = exact``, one batched call) and the fused loss
   (``implementation = fused``, the Triton kernel): ms per step, peak GPU memory, and the loss
   and gradient differences against the exact path.
2. **The ViT-S/14 paper-recipe training step** (method.md §12: 2 global crops at 518 px, 4
   local crops at 98 px, batch 64, queue 8192, k = 7, n = 49, 10 pairs) with the backbone in bf16
   autocast and the similarity + sort in fp32: s/step, peak GPU memory and the projected GPU
   hours for 25 COCO epochs (46,200 steps), for each ``--step-impls`` (default fused, exact).
   Random weights and random images already on the device (the data path is not measured here);
   the overlap boxes are the full crops, which costs the same as real boxes.

It needs only torch, torchvision, timm and triton: ``omegaconf`` and ``lightning_utilities``
(imported at module level by ``neco.config`` and ``neco.io`` but never called here) are replaced
by inert stand-ins when missing, and diffsort is optional. The exact command (about 3 minutes of
GPU time on an H100-class GPU, most of it the first Triton compile and the diffsort loop)::

    python -m bench.gpu_train_step --out bench/results/gpu_train_step.json

CPU smoke run (tiny shapes, checks that everything runs; the fused loss uses the C kernel)::

    python -m bench.gpu_train_step --device cpu --smoke --out /tmp/gpu_train_step_smoke.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

STEPS_25_EPOCHS = 46_200  # 1,848 steps/epoch at B = 64 on COCO x 25 epochs (method.md §14.1)


def _stub_missing() -> list[str]:
    """Register stand-ins for modules ``neco`` imports at module level but this script never
    calls (the bare GPU machine has only torch/timm/torchvision/triton). Returns their names."""
    stubbed = []
    if importlib.util.find_spec("omegaconf") is None:
        om, errors = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.errors")
        for name in ("DictConfig", "ListConfig", "OmegaConf"):
            setattr(om, name, type(name, (), {}))
        errors.OmegaConfBaseException = type("OmegaConfBaseException", (Exception,), {})  # type: ignore[attr-defined]
        om.errors = errors  # type: ignore[attr-defined]
        sys.modules.update({"omegaconf": om, "omegaconf.errors": errors})
        stubbed.append("omegaconf")
    if importlib.util.find_spec("lightning_utilities") is None:
        names = ("lightning_utilities", "lightning_utilities.core",
                 "lightning_utilities.core.rank_zero")
        mods = {m: types.ModuleType(m) for m in names}

        def rank_zero_only(fn: Callable[..., Any]) -> Callable[..., Any]:
            return fn

        mods["lightning_utilities.core.rank_zero"].rank_zero_only = rank_zero_only  # type: ignore[attr-defined]
        sys.modules.update(mods)
        stubbed.append("lightning_utilities")
    return stubbed  # (PyYAML, used by neco.config.presets, comes with timm's huggingface_hub)


STUBBED = _stub_missing()

from neco.config.method import (  # noqa: E402  (after the stand-ins)
    LossConfig,
    LossImplementation,
    Similarity,
    SortDistribution,
    SortNetwork,
)
from neco.method.heads import ProjectionHead  # noqa: E402
from neco.method.loss import loss_from_maps, neco_loss, similarities  # noqa: E402
from neco.method.optim import param_groups  # noqa: E402
from neco.method.references import ReferenceQueue  # noqa: E402
from neco.method.schedules import cosine_schedule, ema_update  # noqa: E402
from neco.models.vit import build_backbone  # noqa: E402


def _cfg(impl: LossImplementation, n: int, k: int, queue: bool) -> LossConfig:
    return LossConfig(roi_k=k, n_refs=n, similarity=Similarity.COSINE,
                      sort_network=SortNetwork.BITONIC, sort_distribution=SortDistribution.CAUCHY,
                      art_lambda=0.25, steepness_student=100.0, steepness_teacher=100.0,
                      log_eps=0.0, queue=queue, queue_length=8192, queue_push_per_image=10,
                      crops_for_assign=[0, 1], use_teacher=True, implementation=impl)


class _Timer:
    """Wall time with device synchronisation, and the peak memory above a baseline."""

    def __init__(self, dev: torch.device) -> None:
        self.cuda = dev.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> int:
        self.sync()
        if not self.cuda:
            return 0
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())

    def peak_gib(self, base: int) -> float | None:
        return (torch.cuda.max_memory_allocated() - base) / 2**30 if self.cuda else None


def _diffsort_loss(dev: torch.device, n: int) -> Callable[..., torch.Tensor] | None:
    """Official-style loss with diffsort: one sort call per pair, one backward at the end."""
    if importlib.util.find_spec("diffsort") is None:
        return None
    import diffsort

    net = diffsort.networks.get_sorting_network("bitonic", n, str(dev))

    def loss(f_s: torch.Tensor, f_t: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        total = f_s.new_zeros(())
        for i in range(f_s.shape[0]):
            r = refs[i]
            s_s = similarities(f_s[i], r, Similarity.COSINE).reshape(-1, n)
            with torch.no_grad():
                s_t = similarities(f_t[i], r, Similarity.COSINE).reshape(-1, n)
                _, q = diffsort.functional.sort(net, s_t, 100.0, 0.25, "cauchy")
            _, p = diffsort.functional.sort(net, s_s, 100.0, 0.25, "cauchy")
            total = total + (-(q * torch.log(p)).sum(-1).mean())
        return total / f_s.shape[0]

    return loss


def bench_loss(dev: torch.device, *, pairs: int, batch: int, k: int, n: int, dim: int,
               repeats: int) -> dict[str, Any]:
    """Part 1: ms per loss forward + backward and peak memory for each implementation."""
    timer = _Timer(dev)
    g = torch.Generator().manual_seed(0)
    shape = (pairs, batch, k * k, dim)
    f_t = torch.randn(shape, generator=g).to(dev)
    f_s0 = (f_t.cpu() + 0.5 * torch.randn(shape, generator=g)).to(dev)
    refs = torch.randn((pairs, batch, n, dim), generator=g).to(dev)
    impls: dict[str, Callable[..., torch.Tensor] | None] = {
        "diffsort": _diffsort_loss(dev, n),
        "exact": lambda a, b, c: neco_loss(a, b, c, _cfg(LossImplementation.EXACT, n, k, False))[0],
        "fused": lambda a, b, c: neco_loss(a, b, c, _cfg(LossImplementation.FUSED, n, k, False))[0],
    }
    out: dict[str, Any] = {"shape": {"pairs": pairs, "batch": batch, "queries": k * k, "n": n,
                                     "dim": dim, "query_rows": pairs * batch * k * k}}
    grads: dict[str, torch.Tensor] = {}
    for name, fn in impls.items():
        if fn is None:
            out[name] = {"skipped": "diffsort is not installed"}
            continue
        times = []
        base = timer.reset()
        for rep in range(repeats + 2):  # two warm-up passes (Triton compile, allocator)
            f_s = f_s0.clone().requires_grad_()
            timer.sync()
            t0 = time.perf_counter()
            loss = fn(f_s, f_t, refs)
            loss.backward()
            timer.sync()
            if rep >= 2:
                times.append(time.perf_counter() - t0)
        grads[name] = f_s.grad.detach().float()  # type: ignore[union-attr]
        out[name] = {"ms_mean": 1e3 * sum(times) / len(times), "ms_min": 1e3 * min(times),
                     "peak_gib": timer.peak_gib(base), "loss": float(loss.detach())}
    ref = grads["exact"]
    for name, grad in grads.items():
        out[name]["rel_dgrad_vs_exact"] = float((grad - ref).abs().max() / ref.abs().max())
    for name in ("diffsort", "exact"):
        if "ms_min" in out.get(name, {}):
            out[f"fused_speedup_vs_{name}"] = out[name]["ms_min"] / out["fused"]["ms_min"]
    return out


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


def bench_step(dev: torch.device, impl: LossImplementation, args: argparse.Namespace,
               ) -> dict[str, Any]:
    """Part 2: the full training step (EMA, teacher, student, loss, backward, AdamW)."""
    timer = _Timer(dev)
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
    cfg = _cfg(impl, args.k * args.k, args.k, True)
    queue = ReferenceQueue(num_banks=2, queue_length=8192, dim=256).to(dev)
    opt = torch.optim.AdamW(
        param_groups(student, s_head, weight_decay=0.04, lr_backbone=1e-5, lr_head=1e-4))
    patch = student.patch_size
    b, g, loc = args.batch, args.global_size, args.local_size
    sizes = [g, g, loc, loc, loc, loc]
    full = torch.tensor([[0.0, 0.0, s, s] for s in sizes], device=dev)
    boxes_t = full.view(1, 1, 6, 4).expand(b, 2, 6, 4) / patch  # (B, A, C, 4) in g's frame
    boxes_s = full.view(1, 6, 1, 4).expand(b, 6, 2, 4) / patch  # (B, C, A, 4) in v's frame
    rng = torch.Generator().manual_seed(1)
    views = [torch.randn(b, 3, s, s, device=dev) for s in sizes]
    bf16 = args.precision == "bf16"
    times, losses = [], []
    base = timer.reset()
    for step in range(args.steps):
        timer.sync()
        t0 = time.perf_counter()
        ema_update(torch.nn.ModuleList([teacher, t_head]), torch.nn.ModuleList([student, s_head]),
                   cosine_schedule(0.9995, 1.0, step, args.steps))
        with torch.no_grad():
            t_maps = _maps(teacher, t_head, views[:2], patch, bf16)
        s_maps = _maps(student, s_head, views, patch, bf16)
        loss, _ = loss_from_maps(student_maps=s_maps, teacher_maps=t_maps, boxes_teacher=boxes_t,
                                 boxes_student=boxes_s, cfg=cfg, queue=queue, generator=rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        timer.sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    s_min, s_mean = min(times), sum(times) / len(times)
    return {"implementation": impl.value, "steps_timed": len(times), "s_per_step_mean": s_mean,
            "s_per_step_min": s_min, "peak_gpu_memory_gib": timer.peak_gib(base),
            "projected_gpu_hours_25_epochs": s_mean * STEPS_25_EPOCHS / 3600,
            "loss_first_last": [losses[0], losses[-1]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_vits14_xr")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--global-size", type=int, default=518)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--k", type=int, default=7, help="ROI side; n = k*k references")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--loss-repeats", type=int, default=10)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--step-impls", default="fused,exact",
                        help="comma-separated loss implementations for the training step")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (smoke run)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes (vit_tiny_demo, batch 2, 112/48 px, k = 3)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_train_step.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.batch, args.global_size, args.local_size = "vit_tiny_demo", 2, 112, 48
        args.k, args.steps, args.warmup, args.loss_repeats = 3, 2, 1, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_train_step needs a CUDA device (or --device cpu --smoke)")
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    loss = bench_loss(dev, pairs=10, batch=args.batch, k=args.k, n=args.k * args.k, dim=256,
                      repeats=args.loss_repeats)
    steps = [bench_step(dev, LossImplementation(i), args) for i in args.step_impls.split(",")]
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "triton": _version("triton"), "diffsort": _version("diffsort"), "stubbed": STUBBED,
        "backbone": args.backbone, "batch": args.batch, "global_size": args.global_size,
        "local_size": args.local_size, "precision_backbone": args.precision,
        "precision_sort": "fp32 (TF32 off)", "smoke": args.smoke, "loss_only": loss,
        "train_step": steps, "wall_s_total": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    return str(getattr(__import__(module), "__version__", "unknown"))


if __name__ == "__main__":
    main()
