"""Batched multi-crop views for pretraining: crop geometry from ``neco.method.crops``, tensor
augmentation vectorised over the batch.

Geometry is NeCo's (``sample_views`` with the overlap constraint, so every local crop overlaps
both globals and ``overlap_boxes`` gives each (global, view) overlap in both frames, which the
dense loss ROI-aligns). The photometric part follows DINO/NeCo's recipe (method.md §2) on
tensors, one draw per crop: ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p = 0.8 (brightness,
contrast, saturation, hue in this fixed order; hue as a rotation of the YIQ chroma plane, a
linear stand-in for the HSV hue shift), RandomGrayscale(0.2), Gaussian blur with
sigma ~ U[0.1 s', 2.0 s'] with p = 0.5, then ImageNet normalisation. No flips (they would break
the box correspondence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from neco.config.method import CropConfig
from neco.method.augment import IMAGENET_MEAN, IMAGENET_STD
from neco.method.crops import overlap_boxes, sample_views

_GRAY = torch.tensor([0.299, 0.587, 0.114])
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


@dataclass(frozen=True)
class ViewBatch:
    """One batch of views.

    Attributes:
        views: C normalised tensors ``(B, 3, s_c, s_c)``, the 2 globals first.
        boxes_teacher: ``(B, 2, C, 4)`` overlap of global g with view v in g's frame (px).
        boxes_student: ``(B, C, 2, 4)`` the same overlap in v's frame (px).
    """

    views: list[torch.Tensor]
    boxes_teacher: torch.Tensor
    boxes_student: torch.Tensor


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, 1, H, W)`` luma."""
    return (x * _GRAY.view(1, 3, 1, 1)).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue jitter of ``(B, 3, H, W)`` in [0, 1]."""
    b = x.shape[0]
    s = 0.8 * strength

    def factor(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=gen)).view(b, 1, 1, 1)

    x = (x * factor(max(0.0, 1 - s), 1 + s)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(max(0.0, 1 - s), 1 + s) + mean).clamp(0, 1)
    g = _gray(x)
    x = ((x - g) * factor(max(0.0, 1 - s), 1 + s) + g).clamp(0, 1)
    hue = min(0.2 * strength, 0.5)
    angle = (2 * math.pi * (2 * hue * torch.rand(b, generator=gen) - hue)).view(b, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1:2, 1:2], rot[:, 1:2, 2:3] = cos, -sin
    rot[:, 2:3, 1:2], rot[:, 2:3, 2:3] = sin, cos
    mat = _YIQ2RGB @ rot @ _RGB2YIQ  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", mat, x).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 3, H, W)`` with one sigma (px) per sample, reflect pad."""
    b, c, h, w = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*3, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1),
                 groups=b * c)  # fmt: skip
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1),
                 groups=b * c)  # fmt: skip
    return y.reshape(b, c, h, w)


def photometric(
    x: torch.Tensor, *, jitter_strength: float, blur_strength: float, gen: torch.Generator
) -> torch.Tensor:
    """NeCo/DINO photometric augmentation of ``(B, 3, H, W)`` in [0, 1], then normalisation."""
    b = x.shape[0]
    jittered = color_jitter(x, jitter_strength, gen)
    x = torch.where((torch.rand(b, generator=gen) < 0.8).view(b, 1, 1, 1), jittered, x)
    x = torch.where((torch.rand(b, generator=gen) < 0.2).view(b, 1, 1, 1),
                    _gray(x).expand_as(x), x)  # fmt: skip
    sigma = blur_strength * (0.1 + 1.9 * torch.rand(b, generator=gen))
    blur = (torch.rand(b, generator=gen) < 0.5).view(b, 1, 1, 1)
    if blur_strength > 0:
        x = torch.where(blur, gaussian_blur(x, sigma), x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_batch(
    images: list[torch.Tensor],
    indices: list[int],
    *,
    crops: CropConfig,
    jitter_strength: float,
    blur_strength: float,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> ViewBatch:
    """Cut, resize and augment every view of ``images[i]`` for ``i`` in ``indices``.

    Args:
        images: uint8 ``(3, H, W)`` images.
        indices: the batch.
        crops: geometry; ``global_size`` and ``local_size`` must be set.
        jitter_strength, blur_strength: photometric strengths.
        rng: crop-geometry generator.
        gen: photometric generator.
    """
    assert crops.global_size is not None and crops.local_size is not None
    num_views = crops.num_global + crops.num_local
    sizes = np.array([crops.global_size] * crops.num_global + [crops.local_size] * crops.num_local)
    per_view: list[list[torch.Tensor]] = [[] for _ in range(num_views)]
    gcs, alls = [], []
    for i in indices:
        img = images[i].float() / 255.0
        h, w = int(img.shape[1]), int(img.shape[2])
        rects = sample_views(rng, width=w, height=h, cfg=crops, image_id=str(i), epoch=0)
        gc, all_ = overlap_boxes(rects, sizes, crops.num_global)
        gcs.append(gc)
        alls.append(all_)
        for v, ((x, y, cw, ch), s) in enumerate(zip(rects.tolist(), sizes.tolist(), strict=True)):
            per_view[v].append(TF.resized_crop(img, y, x, ch, cw, [s, s], antialias=True))
    views = [
        photometric(torch.stack(v), jitter_strength=jitter_strength,
                    blur_strength=blur_strength, gen=gen)
        for v in per_view
    ]  # fmt: skip
    return ViewBatch(
        views=views,
        boxes_teacher=torch.from_numpy(np.stack(gcs)).float(),
        boxes_student=torch.from_numpy(np.stack(alls)).float(),
    )


def single_views(
    images: list[torch.Tensor],
    indices: list[int],
    *,
    size: int,
    scale: tuple[float, float],
    jitter_strength: float,
    blur_strength: float,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> torch.Tensor:
    """One random-resized, randomly flipped, photometrically augmented view per image.

    For masked prediction (no second view, so no box bookkeeping and flips are allowed):
    ``RandomResizedCrop(size, scale, ratio 3/4..4/3)`` (area then log-ratio uniform, 10 tries,
    else the whole image), horizontal flip p = 0.5, then :func:`photometric`'s jitter, grey and
    blur. Returns ``(B, 3, size, size)`` in [0, 1], NOT normalised.
    """
    out = []
    for i in indices:
        img = images[i].float() / 255.0
        h, w = int(img.shape[1]), int(img.shape[2])
        box = (0, 0, h, w)
        for _ in range(10):
            area = h * w * rng.uniform(scale[0], scale[1])
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                box = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
                break
        crop = TF.resized_crop(img, box[0], box[1], box[2], box[3], [size, size],
                               antialias=True)  # fmt: skip
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    x = torch.stack(out)
    b = x.shape[0]
    if jitter_strength > 0:
        jittered = color_jitter(x, jitter_strength, gen)
        x = torch.where((torch.rand(b, generator=gen) < 0.8).view(b, 1, 1, 1), jittered, x)
        x = torch.where((torch.rand(b, generator=gen) < 0.2).view(b, 1, 1, 1),
                        _gray(x).expand_as(x), x)  # fmt: skip
    if blur_strength > 0:
        sigma = blur_strength * (0.1 + 1.9 * torch.rand(b, generator=gen))
        blur = (torch.rand(b, generator=gen) < 0.5).view(b, 1, 1, 1)
        x = torch.where(blur, gaussian_blur(x, sigma), x)
    return x


def normalise(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of ``(B, 3, H, W)`` in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
