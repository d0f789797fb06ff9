"""NeCo's multi-crop cut and photometric augmentation as batched tensor ops, for the accelerator.

The same augmentation as :mod:`neco.method.augment` (method.md §2; NeCo, arXiv 2408.11054,
official code ``vpariza/NeCo``), split so that a GPU step is not starved by CPU augmentation:

* **draws** (:func:`draw_views`, in the DataLoader workers): the photometric parameters of every
  view come from the very generator the CPU path uses, ``sample_rng(seed, epoch, index, view)``,
  consumed in the same order, so both paths draw *identical* parameters (hence the same
  distributions: p = 0.8 jitter with its random op order, p = 0.2 grey, p = 0.5 blur);
* **cut + photometric** (:func:`augment_batch`, on the device after the batch transfer): each
  view is the manifest's box ``(x, y, w, h)`` cut from the decoded ``uint8`` image and resized
  bilinearly with antialiasing, then jittered, greyed and blurred per view, batched over the
  views of equal size.

The tensor ops reproduce Pillow's arithmetic (what the CPU path runs) on integer-valued float
"levels" 0..255: the resize runs width then height with Pillow's 22-bit fixed-point bilinear
taps and rounding in between (exact float64 integer sums), blends truncate (``Image.blend``),
luma is ITU-R 601 in 16-bit fixed point (``convert("L")``), hue goes through Pillow's 8-bit HSV
with its float/double rounding, and the blur is Pillow's three box passes per axis with
replicated edges and 24-bit fixed-point weights. Each op is bit-identical to Pillow. One
difference remains: Pillow 13 runs the *height* pass first for some crops taller than wide (an
internal cost heuristic not reproduced here); the two orders differ by at most one level on
about a fifth of such a view's pixels, which the later ops can carry on
(``tests/test_tensor_augment.py`` states the tolerances). Crops at least as wide as tall are
bit-identical to the CPU path.
No flip and no solarization, as in the official recipe.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from neco.method.augment import IMAGENET_MEAN, IMAGENET_STD, PhotometricParams, sample_rng

_IDENTITY = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue factors of "no jitter"


class AugmentDevice(str, enum.Enum):
    """Where views are cut and augmented (``train.augment_device``).

    ``cpu``: PIL in the DataLoader workers (:mod:`neco.method.augment`); ``accelerator``: the
    workers only decode, the LightningModule augments on its device (:func:`augment_batch`).
    """

    CPU = "cpu"
    ACCELERATOR = "accelerator"


def parse_augment_device(value: str | AugmentDevice) -> AugmentDevice:
    """``train.augment_device`` as an :class:`AugmentDevice`; raises naming the valid values."""
    try:
        return AugmentDevice(value)
    except ValueError as err:
        valid = " | ".join(d.value for d in AugmentDevice)
        raise ValueError(f"train.augment_device={value!r}: expected {valid}") from err


class ViewDraws(NamedTuple):
    """Photometric parameters of views; leading shape ``L`` = ``(C,)`` per image, ``(B, C)`` batch.

    Host numpy arrays on purpose: Lightning moves only tensors, so the device code indexes with
    them without a device-to-host sync.

    Attributes:
        ops: ``L + (4,)`` bool, jitter op applied (brightness, contrast, saturation, hue).
        order: ``L + (4,)`` int64, the jitter ops in application order (a permutation).
        factors: ``L + (4,)`` float64, brightness, contrast, saturation and hue factors.
        gray: ``L`` bool, converted to grey.
        radius: ``L`` float64, blur radius; 0 = not blurred.
    """

    ops: np.ndarray
    order: np.ndarray
    factors: np.ndarray
    gray: np.ndarray
    radius: np.ndarray


def draw_view(
    params: PhotometricParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, float]:
    """Draw one view's parameters, consuming ``rng`` exactly as ``augment.photometric`` does.

    Returns:
        ``(ops (4,), order (4,), factors (4,), gray, radius)`` as in :class:`ViewDraws`.
    """
    b = c = s = 0.8 * params.jitter_strength
    h = 0.2 * params.jitter_strength
    ops, order, factors = np.zeros(4, bool), np.arange(4), np.array(_IDENTITY)
    if rng.random() < 0.8:
        order = rng.permutation(4)
        factors = np.array([
            rng.uniform(max(0.0, 1 - b), 1 + b),
            rng.uniform(max(0.0, 1 - c), 1 + c),
            rng.uniform(max(0.0, 1 - s), 1 + s),
            rng.uniform(-min(h, 0.5), min(h, 0.5)),
        ])
        ops = np.array([b > 0, c > 0, s > 0, h > 0])  # degenerate ranges are skipped
    gray = bool(rng.random() < 0.2)
    radius = 0.0
    if rng.random() < 0.5:
        radius = float(rng.uniform(0.1 * params.blur_strength, 2.0 * params.blur_strength))
    return ops, order, factors, gray, radius


def draw_views(
    params: PhotometricParams, *, seed: int, epoch: int, index: int, num_views: int
) -> ViewDraws:
    """The parameters of the ``num_views`` views of image ``index`` in ``epoch``, ``L = (C,)``."""
    drawn = [draw_view(params, sample_rng(seed, epoch, index, v)) for v in range(num_views)]
    return ViewDraws(
        ops=np.stack([d[0] for d in drawn]),
        order=np.stack([d[1] for d in drawn]).astype(np.int64),
        factors=np.stack([d[2] for d in drawn]),
        gray=np.array([d[3] for d in drawn], dtype=bool),
        radius=np.array([d[4] for d in drawn], dtype=np.float64),
    )


def stack_draws(draws: Sequence[ViewDraws]) -> ViewDraws:
    """Per-image draws ``(C, ...)`` -> a batch ``(B, C, ...)``."""
    return ViewDraws(*(np.stack(field) for field in zip(*draws, strict=True)))


# ---- Pillow's arithmetic on float "levels" (N, 3, H, W), integer values 0..255 ---------------
def luma(x: torch.Tensor) -> torch.Tensor:
    """``convert("L")``: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, ``(N, 1, H, W)``.

    Exact in float32: the sum stays below 2^24.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def blend(base: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``Image.blend(base, x, alpha)``: ``base + alpha (x - base)`` in float32, truncated."""
    return (base + alpha * (x - base)).clamp_(0, 255).floor_()


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black; ``f`` is ``(N, 1, 1, 1)``."""
    return blend(torch.zeros_like(x), x, f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the luma mean, rounded to a level."""
    total = luma(x).to(torch.int64).sum(dim=(1, 2, 3), keepdim=True)
    mean = torch.floor(total.to(torch.float64) / (x.shape[-1] * x.shape[-2]) + 0.5)
    return blend(mean.to(x.dtype).expand_as(x), x, f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the grey image."""
    return blend(luma(x).expand_as(x), x, f)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's PIL ``adjust_hue``: Pillow's 8-bit HSV, ``H += int(255 f) mod 256``.

    Follows Pillow's ``rgb2hsv``/``hsv2rgb`` (float32 where it stores floats, float64 where its
    expressions are double) so that the levels match.
    """
    x = x.to(torch.float32)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = torch.maximum(r, torch.maximum(g, b)), torch.minimum(r, torch.minimum(g, b))
    cr = maxc - minc
    grey = cr == 0
    crs = torch.where(grey, torch.ones_like(cr), cr)
    sat = crs / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / crs, (maxc - g) / crs, (maxc - b) / crs
    h = torch.where(
        r == maxc,
        bc - gc,
        torch.where(g == maxc, (2.0 + rc.double() - bc).float(), (4.0 + gc.double() - rc).float()),
    )
    h64 = torch.fmod(h.double() / 6.0 + 1.0, 1.0).float().double()  # stored in a C float
    hq = torch.where(grey, 0.0, torch.trunc(h64 * 255.0).clamp(0, 255))
    sq = torch.where(grey, 0.0, torch.trunc(sat.double() * 255.0).clamp(0, 255))
    shift = torch.trunc(f.reshape(-1, 1, 1) * 255.0)  # np.int32(f * 255), then mod 256
    hq = torch.remainder(hq + shift, 256.0)
    v = maxc.double()
    sector = torch.floor(hq * 6.0 / 255.0)
    frac = (hq * 6.0 / 255.0 - sector).float().double()
    fs = (sq / 255.0).float().double()

    def level(t: torch.Tensor) -> torch.Tensor:
        return torch.floor(v * t + 0.5).clamp(0, 255)  # C round(): half away from zero

    p = level(1.0 - fs)
    q = level(1.0 - (fs.float() * frac.float()).double())
    t = level(1.0 - fs * (1.0 - frac))
    i = torch.remainder(sector, 6.0)

    def pick(*by_sector: torch.Tensor) -> torch.Tensor:
        out = by_sector[5]
        for k in range(4, -1, -1):
            out = torch.where(i == k, by_sector[k], out)
        return out

    rgb = torch.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], 1)
    rgb = torch.where((sq == 0).unsqueeze(1), v.unsqueeze(1), rgb)
    return rgb.to(x.dtype)


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def box_weights(radius: float) -> tuple[int, int, int]:
    """Pillow's ``GaussianBlur(radius)`` box: ``(r, ww, fw)`` of each of its 3 passes per axis.

    Every pass averages ``2 r + 1`` taps with weight ``ww`` plus the two next ones with ``fw``,
    in 24-bit fixed point; the box radius matches the Gaussian's variance (float32, as Pillow).
    """
    f32 = np.float32
    sigma2 = f32(radius) * f32(radius) / f32(3)
    big_l = f32(np.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f32(np.floor((float(big_l) - 1.0) / 2.0))
    a = (f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * sigma2)
    a = a / (f32(6) * (sigma2 - (small_l + f32(1)) * (small_l + f32(1))))
    box = f32(small_l + a)
    r = int(box)
    ww = int(f32(1 << 24) / (box * f32(2) + f32(1)))
    fw = ((1 << 24) - (2 * r + 1) * ww) // 2
    return r, ww, fw


def box_blur(x: torch.Tensor, radii: Sequence[float]) -> torch.Tensor:
    """``ImageFilter.GaussianBlur(radius_n)`` per sample: 3 box passes along W, then 3 along H.

    Each pass sums in float64 (exact integers) and rounds like Pillow, ``(acc + 2^23) >> 24``;
    edges are replicated.
    """
    boxes = [box_weights(r) for r in radii]
    reach = max(r for r, _, _ in boxes) + 1
    taps = np.zeros((len(boxes), 2 * reach + 1))
    for n, (r, ww, fw) in enumerate(boxes):
        taps[n, reach - r : reach + r + 1] = ww
        taps[n, reach - r - 1] = taps[n, reach + r + 1] = fw
    w = torch.as_tensor(taps, dtype=torch.float64, device=x.device).view(len(boxes), 1, 1, 1, -1)
    y = x.to(torch.float64)
    for dim in (-1, -2):
        for _ in range(3):
            size = y.shape[dim]
            pad = (reach, reach, 0, 0) if dim == -1 else (0, 0, reach, reach)
            padded = F.pad(y, pad, mode="replicate")
            acc = w[..., 0] * padded.narrow(dim, 0, size)
            for j in range(1, 2 * reach + 1):
                acc += w[..., j] * padded.narrow(dim, j, size)
            y = torch.floor((acc + float(1 << 23)) / float(1 << 24))
    return y.to(x.dtype)


def photometric_levels(x: torch.Tensor, draws: ViewDraws) -> torch.Tensor:
    """Jitter (random op order), grey and blur ``x (N, 3, H, W)`` per view, ``draws`` ``L = (N,)``.

    Each op runs once per view, on the sub-batch of the views that apply it at that position.
    """
    x = x.clone()
    factors = torch.as_tensor(draws.factors, dtype=torch.float32, device=x.device)
    for k in range(4):
        op_at_k = draws.order[:, k]
        for op, fn in enumerate(_JITTER):
            sel = np.flatnonzero((op_at_k == op) & draws.ops[:, op])
            if sel.size:
                idx = torch.as_tensor(sel, device=x.device)
                x[idx] = fn(x[idx], factors[idx, op].view(-1, 1, 1, 1))
    sel = np.flatnonzero(draws.gray)
    if sel.size:
        idx = torch.as_tensor(sel, device=x.device)
        x[idx] = luma(x[idx]).expand(-1, 3, -1, -1)
    sel = np.flatnonzero(draws.radius > 0)
    if sel.size:
        idx = torch.as_tensor(sel, device=x.device)
        x[idx] = box_blur(x[idx], draws.radius[sel].tolist())
    return x


_PRECISION = 22  # Pillow's fixed-point bits of 8-bit resampling coefficients


@functools.lru_cache(maxsize=4096)
def resize_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear resampling taps along one axis: ``(index, weight)``, ``(out, K)``.

    Triangle filter of support ``max(in / out, 1)`` centred on ``(i + 0.5) in / out`` (so
    antialiased when shrinking), normalised per output pixel and rounded to 22-bit fixed-point
    integers, as Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``; unused taps have
    weight 0 and a clamped index.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    ksize = int(np.ceil(filterscale)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - filterscale + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + filterscale + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = np.maximum(1.0 - np.abs((taps + xmin[:, None] - center[:, None] + 0.5)
                                * (1.0 / filterscale)), 0.0)
    w[taps >= xmax[:, None]] = 0.0
    total = w[:, 0].copy()
    for k in range(1, ksize):  # Pillow's summation order
        total += w[:, k]
    w = w / np.where(total == 0, 1.0, total)[:, None]
    fixed = np.trunc(w * (1 << _PRECISION) + np.where(w < 0, -0.5, 0.5))
    return np.minimum(xmin[:, None] + taps, in_size - 1), fixed


def _resample_last(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """One Pillow resampling pass along the last axis of float64 levels, rounded to levels."""
    index, weight = resize_coeffs(x.shape[-1], out_size)
    idx = torch.as_tensor(index.ravel(), device=x.device)
    taps = x.index_select(-1, idx).view(*x.shape[:-1], *index.shape)
    acc = (taps * torch.as_tensor(weight, device=x.device)).sum(-1)
    return torch.floor((acc + float(1 << (_PRECISION - 1))) / float(1 << _PRECISION)).clamp_(0, 255)


def cut_view(image: torch.Tensor, rect: Sequence[int], size: int) -> torch.Tensor:
    """Crop ``(x, y, w, h)`` of ``image (3, H, W) uint8``, resize to ``size``²: levels (3, s, s).

    Pillow's ``crop(...).resize(BILINEAR)``: width pass, rounding, height pass, rounding, with
    its fixed-point taps (:func:`resize_coeffs`; float64 sums of integers are exact). Bit for
    bit where Pillow runs the width pass first (always when ``w >= h``).
    """
    x, y, w, h = (int(v) for v in rect)
    crop = image[:, y : y + h, x : x + w].to(torch.float64)
    if w != size:
        crop = _resample_last(crop, size)
    if h != size:
        crop = _resample_last(crop.transpose(-1, -2), size).transpose(-1, -2)
    return crop.to(torch.float32)


def normalise(levels: torch.Tensor) -> torch.Tensor:
    """Levels -> ``to_tensor`` + ImageNet normalisation, in the CPU path's float op order."""
    mean = torch.tensor(IMAGENET_MEAN, device=levels.device).view(-1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=levels.device).view(-1, 3, 1, 1)
    return levels.div(255).sub_(mean).div_(std)


def augment_batch(
    images: Sequence[torch.Tensor], rects: np.ndarray, sizes: np.ndarray, draws: ViewDraws
) -> list[torch.Tensor]:
    """Cut and augment every view of a batch on the images' device.

    Args:
        images: B decoded images ``(3, H_b, W_b)`` uint8, all on one device.
        rects: manifest boxes ``(B, C, 4)`` as ``(x, y, w, h)`` in original-image pixels.
        sizes: output sides ``(B, C)``, equal over the batch for each view.
        draws: photometric parameters, ``L = (B, C)``.

    Returns:
        C normalised float32 tensors ``(B, 3, s_c, s_c)`` (2 global, then the local crops).
    """
    b, c = rects.shape[:2]
    if len(images) != b or sizes.shape != (b, c) or draws.gray.shape != (b, c):
        raise ValueError(
            f"augment_batch: {len(images)} images, rects {rects.shape}, sizes {sizes.shape}, "
            f"draws {draws.gray.shape}: expected B images and (B, C) views"
        )
    if (sizes != sizes[:1]).any():
        raise ValueError("augment_batch: a view's output size differs between images")
    out: list[torch.Tensor | None] = [None] * c
    by_size: dict[int, list[int]] = {}
    for v in range(c):
        by_size.setdefault(int(sizes[0, v]), []).append(v)
    for size, views in by_size.items():
        levels = torch.stack([
            cut_view(images[i], rects[i, v], size) for v in views for i in range(b)
        ])  # (len(views) * B, 3, s, s), view-major
        flat = ViewDraws(*(a[:, views].swapaxes(0, 1).reshape(b * len(views), *a.shape[2:])
                           for a in draws))
        normalised = normalise(photometric_levels(levels, flat))
        for j, v in enumerate(views):
            out[v] = normalised[j * b : (j + 1) * b]
    return [t for t in out if t is not None]


def decode_jpeg_batch(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode encoded JPEG files ``(n_bytes,) uint8`` to RGB ``(3, H, W)`` uint8 on ``device``.

    On CUDA this is nvjpeg (``torchvision.io.decode_jpeg(device="cuda")``), batched; elsewhere
    libjpeg-turbo on the CPU. nvjpeg's IDCT may differ from libjpeg's by a level.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
    return list(decoded)
