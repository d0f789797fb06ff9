"""Seeded multi-crop sampling and crop-overlap geometry (method.md §2, §3).

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).

Crops are rectangles ``(x, y, w, h)`` in original-image pixels (left, top, width, height; the
crop covers the continuous region ``[x, x + w) x [y, y + h)``) that are resized to an
``s x s`` square, so the two axes scale independently.

**Sampling** follows torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts of a
target area ``U(scale) * W * H`` and a log-uniform aspect ratio in ``ratio``, rounded to integer
``w, h``; the first attempt that fits is placed uniformly; otherwise the centre-crop fallback.
Randomness comes from a ``numpy`` generator seeded with ``SeedSequence([seed, epoch, index])``,
so an image's boxes do not depend on any other image.

**Overlap constraint.** Views are drawn in order, globals first. Every view after the first is
redrawn until its intersection with every earlier global crop exceeds
``min_intersection * W * H`` (times ``second_global_factor`` for a global against an earlier
global), at most ``max_retries`` times, then :class:`CropSamplingError` names the image.

**Geometry.** For global g and view v with image-space intersection ``[X1, X2] x [Y1, Y2]``,
the box in crop c's output frame is ``x' = (X - x_c) * s_c / w_c``, ``y' = (Y - y_c) * s_c / h_c``
(float, no rounding). ``gc[g, v]`` uses g's frame, ``all[v, g]`` v's frame; divided by the
patch size they are the token-unit ROI-Align boxes of method.md §5.
"""

from __future__ import annotations

import math

import numpy as np

from neco.config.method import CropConfig

_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params


class CropSamplingError(RuntimeError):
    """No crop satisfying the overlap constraint was found within ``max_retries``."""


def validate_crop_config(cfg: CropConfig) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) naming the ``crops.<key>`` that is out of range."""
    from neco.config import ConfigError  # the loader's error type: one line at the stage entry

    def _range(key: str, pair: list[float], low: float, high: float) -> None:
        ok = len(pair) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                    for v in pair)
        if not ok or not (low < pair[0] <= pair[1] <= high):
            raise ConfigError(
                f"crops.{key}={list(pair)}: expected [lo, hi] with {low} < lo <= hi <= {high}"
            )

    if cfg.num_global < 1:
        raise ConfigError(f"crops.num_global={cfg.num_global}: expected >= 1")
    if cfg.num_local < 0:
        raise ConfigError(f"crops.num_local={cfg.num_local}: expected >= 0")
    _range("global_scale", cfg.global_scale, 0.0, 1.0)
    _range("local_scale", cfg.local_scale, 0.0, 1.0)
    _range("ratio", cfg.ratio, 0.0, math.inf)
    if not 0.0 <= cfg.min_intersection < 1.0:
        raise ConfigError(f"crops.min_intersection={cfg.min_intersection}: expected in [0, 1)")
    if not 0.0 < cfg.second_global_factor < math.inf:
        raise ConfigError(
            f"crops.second_global_factor={cfg.second_global_factor}: expected a finite value > 0"
        )
    if cfg.max_retries < 0:
        raise ConfigError(f"crops.max_retries={cfg.max_retries}: expected >= 0")
    for key in ("global_size", "local_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"crops.{key}={value}: expected a positive int or null")


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one (image, epoch): ``PCG64(SeedSequence([seed, epoch, index]))``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index])))


def fallback_crop(width: int, height: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's fallback: the centred largest crop with the aspect ratio clamped to ``ratio``.

    Returns:
        ``(x, y, w, h)``.
    """
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def sample_crop(
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """One ``RandomResizedCrop.get_params`` draw, re-implemented on a numpy generator.

    Consumes exactly ``2 * 10 + 2`` uniforms per call (unused ones are discarded), so the
    stream position does not depend on which attempt succeeded. The position is
    ``floor(u * (W - w + 1))``, the uniform integer of torchvision's ``randint``.

    Args:
        rng: generator.
        width, height: image size W, H in pixels.
        scale: area fraction range.
        ratio: aspect ratio (w / h) range, sampled log-uniformly.

    Returns:
        ``(x, y, w, h)`` integer crop in image pixels.
    """
    u = rng.random(2 * _ATTEMPTS + 2).tolist()
    area = width * height
    lo_r, hi_r = math.log(ratio[0]), math.log(ratio[1])
    for a in range(_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * a])
        aspect = math.exp(lo_r + (hi_r - lo_r) * u[2 * a + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y = int(u[-2] * (height - h + 1))
            x = int(u[-1] * (width - w + 1))
            return x, y, w, h
    return fallback_crop(width, height, ratio)


def _overlap_area(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return dx * dy if dx > 0 and dy > 0 else 0


def sample_views(
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    cfg: CropConfig,
    image_id: str,
    epoch: int,
) -> np.ndarray:
    """All views of one image under the overlap constraint.

    Args:
        rng: the image's generator (:func:`crop_rng`).
        width, height: image size in pixels.
        cfg: crop parameters.
        image_id, epoch: named in the error message.

    Returns:
        ``(C, 4)`` int64 rectangles ``(x, y, w, h)``, globals first, C = num_global + num_local.

    Raises:
        CropSamplingError: a view failed the constraint ``1 + max_retries`` times.
    """
    area = width * height
    gscale = (cfg.global_scale[0], cfg.global_scale[1])
    lscale = (cfg.local_scale[0], cfg.local_scale[1])
    ratio = (cfg.ratio[0], cfg.ratio[1])
    views: list[tuple[int, int, int, int]] = []
    for view in range(cfg.num_global + cfg.num_local):
        is_global = view < cfg.num_global
        factor = cfg.second_global_factor if is_global else 1.0
        threshold = cfg.min_intersection * factor * area
        earlier = views[: min(view, cfg.num_global)]
        for _ in range(cfg.max_retries + 1):
            rect = sample_crop(
                rng, width=width, height=height, scale=gscale if is_global else lscale, ratio=ratio
            )
            if all(_overlap_area(rect, g) > threshold for g in earlier):
                views.append(rect)
                break
        else:
            raise CropSamplingError(
                f"image {image_id!r} ({width}x{height}), epoch {epoch}, view {view}: no crop "
                f"overlapping the earlier global crops by > {threshold / area:.4g} of the image "
                f"area in {cfg.max_retries + 1} draws (crops.max_retries={cfg.max_retries})"
            )
    return np.asarray(views, dtype=np.int64).reshape(-1, 4)


def rect_to_xyxy(rects: np.ndarray) -> np.ndarray:
    """``(..., 4)`` ``(x, y, w, h)`` -> ``(..., 4)`` float64 ``(x1, y1, x2, y2)``."""
    r = np.asarray(rects, dtype=np.float64)
    return np.concatenate([r[..., :2], r[..., :2] + r[..., 2:]], axis=-1)


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of boxes ``(..., 4)`` ``(x1, y1, x2, y2)`` (broadcasting).

    Empty intersections come out with ``x2 <= x1`` or ``y2 <= y1`` (not clamped).
    """
    return np.concatenate(
        [np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])], axis=-1
    )


def to_frame(boxes: np.ndarray, rects: np.ndarray, out_size: np.ndarray) -> np.ndarray:
    """Image-space boxes into the resized frame of crops ``rects`` (method.md §3).

    Args:
        boxes: ``(..., 4)`` ``(X1, Y1, X2, Y2)`` in image pixels.
        rects: ``(..., 4)`` crop ``(x, y, w, h)``.
        out_size: ``(...)`` output side s of each crop.

    Returns:
        ``(..., 4)`` float64: ``x' = (X - x) s / w``, ``y' = (Y - y) s / h``.
    """
    r = np.asarray(rects, dtype=np.float64)
    s = np.asarray(out_size, dtype=np.float64)[..., None]
    origin = np.concatenate([r[..., :2], r[..., :2]], axis=-1)
    extent = np.concatenate([r[..., 2:], r[..., 2:]], axis=-1)
    framed: np.ndarray = (np.asarray(boxes, dtype=np.float64) - origin) * s / extent
    return framed


def from_frame(boxes: np.ndarray, rects: np.ndarray, out_size: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_frame`: crop-frame boxes back to image pixels."""
    r = np.asarray(rects, dtype=np.float64)
    s = np.asarray(out_size, dtype=np.float64)[..., None]
    origin = np.concatenate([r[..., :2], r[..., :2]], axis=-1)
    extent = np.concatenate([r[..., 2:], r[..., 2:]], axis=-1)
    pixels: np.ndarray = np.asarray(boxes, dtype=np.float64) * extent / s + origin
    return pixels


def overlap_boxes(
    rects: np.ndarray, out_sizes: np.ndarray, num_global: int
) -> tuple[np.ndarray, np.ndarray]:
    """Intersection boxes of every global crop with every view, in both frames.

    Args:
        rects: ``(..., C, 4)`` crop rectangles ``(x, y, w, h)``, globals first.
        out_sizes: ``(C,)`` or ``(..., C)`` output sides.
        num_global: A, the number of global crops (``crops_for_assign`` ranges over them).

    Returns:
        ``gc (..., A, C, 4)``: box of (g, v) in g's frame; ``all (..., C, A, 4)``: in v's frame.
        Output pixels; ``v == g`` gives the full box ``[0, 0, s_g, s_g]``.
    """
    rects = np.asarray(rects, dtype=np.float64)
    sizes = np.broadcast_to(np.asarray(out_sizes, dtype=np.float64), rects.shape[:-1])
    xyxy = rect_to_xyxy(rects)
    g_xyxy = xyxy[..., :num_global, None, :]  # (..., A, 1, 4)
    inter = intersect(g_xyxy, xyxy[..., None, :, :])  # (..., A, C, 4)
    gc = to_frame(inter, rects[..., :num_global, None, :], sizes[..., :num_global, None])
    all_ = to_frame(inter, rects[..., None, :, :], sizes[..., None, :])  # (..., A, C, 4)
    return gc, np.swapaxes(all_, -3, -2)
