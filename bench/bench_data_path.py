"""Data-path benchmark: CPU augmentation vs decode-only workers + tensor augmentation (issue 13).

Run from the repository root::

    python -m bench.bench_data_path [--images 8] [--repeats 2] [--batch 8] [--device cpu|cuda]
                                    [--out bench/results/data_path_cpu]

Paper geometry (method.md §2): 2 x 518 px global + 4 x 98 px local views per image, cut with
the crop sampler's boxes from synthetic COCO-sized 640 x 480 JPEGs (smooth colour fields,
texture and noise, quality 90; written to a temporary folder), official photometric strengths.
Paths, all on 1 torch thread:

* ``cpu``: what a DataLoader worker does today: PIL decode + ``augment.make_views``;
* ``worker``: the accelerator path's worker: PIL decode + ``uint8`` tensor + ``draw_views``
  (``worker_tv``: the same with ``torchvision.io.decode_jpeg`` on the CPU);
* ``tensor``: ``tensor_augment.augment_batch`` on ``--device`` for a batch of ``--batch``
  images; on CUDA also ``nvjpeg``: batched ``decode_jpeg(device="cuda")``.

Per path: process CPU time (user + system) and wall time per image, minimum over repeats, and
images/s per CPU core = 1 / CPU seconds per image (for the device work: images/s of the device
too). Writes ``<out>.md`` and ``<out>.json``, whole.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from neco.config.method import CropConfig
from neco.io import write_text
from neco.method.augment import PhotometricParams, make_views
from neco.method.crops import crop_rng, sample_views
from neco.method.tensor_augment import augment_batch, decode_jpeg_batch, draw_views, stack_draws

PARAMS = PhotometricParams(jitter_strength=1.0, blur_strength=1.0)
CROPS = CropConfig(num_global=2, num_local=4, global_scale=[0.25, 1.0], local_scale=[0.05, 0.25],
                   ratio=[0.75, 4 / 3], min_intersection=0.01, second_global_factor=2.0,
                   max_retries=1000, global_size=518, local_size=98)
SIZES = np.array([518, 518, 98, 98, 98, 98])
W, H = 640, 480


def write_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` photo-like 640 x 480 JPEGs (quality 90) in ``folder``."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (H // 32, W // 32, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((W, H), Image.Resampling.BICUBIC), float)
        yy, xx = np.mgrid[0:H, 0:W]
        texture = 25 * np.sin(xx / rng.uniform(3, 9) + yy / rng.uniform(3, 9))[..., None]
        pixels = np.clip(field + texture + rng.normal(0, 8, (H, W, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:04d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def load_pil(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")  # what neco.data.reader.load_rgb does


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Minimum (process CPU s, wall s) of ``repeats`` calls of ``fn``."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        sync()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        sync()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall


def measure(n: int, repeats: int, batch: int, device: torch.device) -> list[dict[str, Any]]:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    rows: list[dict[str, Any]] = []
    sync: Callable[[], None] = (
        torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), n)
        rects = [sample_views(crop_rng(0, 0, i), width=W, height=H, cfg=CROPS, image_id=str(i),
                              epoch=0) for i in range(n)]

        def cpu_path() -> None:
            for i, p in enumerate(paths):
                make_views(load_pil(p), rects[i], SIZES, params=PARAMS, seed=0, epoch=0, index=i)

        def worker() -> None:
            for i, p in enumerate(paths):
                torch.from_numpy(np.array(load_pil(p), dtype=np.uint8)).permute(2, 0, 1)
                draw_views(PARAMS, seed=0, epoch=0, index=i, num_views=6)

        def worker_tv() -> None:
            for i, p in enumerate(paths):
                decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB)
                draw_views(PARAMS, seed=0, epoch=0, index=i, num_views=6)

        for name, fn in (("cpu", cpu_path), ("worker", worker), ("worker_tv", worker_tv)):
            cpu, wall = timed(fn, repeats, lambda: None)
            rows.append({"path": name, "where": "cpu", "images": n, "cpu_s_per_image": cpu / n,
                         "wall_s_per_image": wall / n})
            print(json.dumps(rows[-1]), flush=True)

        idx = [i % n for i in range(batch)]
        images = [torch.from_numpy(np.array(load_pil(paths[i]))).permute(2, 0, 1).to(device)
                  for i in idx]
        boxes = np.stack([rects[i] for i in idx])
        draws = stack_draws([draw_views(PARAMS, seed=0, epoch=0, index=i, num_views=6)
                             for i in range(batch)])
        sizes = np.tile(SIZES, (batch, 1))
        augment_batch(images, boxes, sizes, draws)  # warm-up (kernels, caches)
        cpu, wall = timed(lambda: augment_batch(images, boxes, sizes, draws), repeats, sync)
        rows.append({"path": "tensor", "where": device.type, "images": batch,
                     "cpu_s_per_image": cpu / batch, "wall_s_per_image": wall / batch})
        print(json.dumps(rows[-1]), flush=True)
        if device.type == "cuda":
            data = [read_file(str(paths[i])) for i in idx]
            decode_jpeg_batch(data, device)
            cpu, wall = timed(lambda: decode_jpeg_batch(data, device), repeats, sync)
            rows.append({"path": "nvjpeg", "where": "cuda", "images": batch,
                         "cpu_s_per_image": cpu / batch, "wall_s_per_image": wall / batch})
            rows[-1]["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["images_per_s_per_core"] = 1.0 / r["cpu_s_per_image"]
        r["images_per_s_wall"] = 1.0 / r["wall_s_per_image"]
    return rows


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}{gpu}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}")


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device) -> str:
    by = {r["path"]: r for r in rows}
    cpu, worker = by["cpu"], by["worker"]
    lines = [
        "# Data path: CPU augmentation vs decode-only workers + tensor augmentation", "",
        "Generated by `python -m bench.bench_data_path`; do not edit.", "",
        f"Machine: {machine(device)}.", "",
        f"Paper geometry: 2 x 518 + 4 x 98 px views per image from {args.images} synthetic "
        "640 x 480 JPEGs (quality 90), official photometric strengths. Time: process CPU time "
        f"(user + system) and wall time, minimum of {args.repeats} repeats.", "",
        "| path | runs on | CPU ms/image | wall ms/image | images/s per CPU core | images/s wall |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['where']} | {1e3 * r['cpu_s_per_image']:.1f} | "
            f"{1e3 * r['wall_s_per_image']:.1f} | {r['images_per_s_per_core']:.1f} | "
            f"{r['images_per_s_wall']:.1f} |"
        )
    gain = worker["images_per_s_per_core"] / cpu["images_per_s_per_core"]
    step = 64 * cpu["cpu_s_per_image"] / 0.1
    lines += [
        "",
        "Paths: `cpu` = PIL decode + `augment.make_views` (today's worker); `worker` = PIL decode "
        "+ uint8 tensor + `draw_views` (the accelerator path's worker; `worker_tv`: "
        "torchvision's CPU JPEG decoder); `tensor` = `augment_batch` (cut, jitter, grey, blur, "
        f"normalise) for a batch of {by['tensor']['images']} on {by['tensor']['where']}"
        + ("; `nvjpeg` = batched `decode_jpeg(device='cuda')`" if "nvjpeg" in by else "") + ".",
        "",
        f"Worker CPU per image: {gain:.1f}x less with the accelerator path. A 64-image step at "
        f"0.1 s needs {step:.0f} cores of `cpu` workers, "
        f"{64 * worker['cpu_s_per_image'] / 0.1:.1f} of `worker` ones.",
    ]
    if by["tensor"]["where"] == "cpu":
        lines.append(
            "The `tensor` row on the CPU is for reference only: it reproduces Pillow's integer "
            "arithmetic in float64 tensor ops, which is slower than Pillow on a CPU core; it is "
            "meant to run on the accelerator (`--device cuda`)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/data_path_cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rows = measure(args.images, args.repeats, args.batch, device)
    meta = {"machine": machine(device), "images": args.images, "repeats": args.repeats,
            "views": SIZES.tolist(), "image_size": [W, H]}
    write_text(f"{args.out}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_text(f"{args.out}.md", markdown(rows, args, device))


if __name__ == "__main__":
    main()
