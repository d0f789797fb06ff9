"""Multi-crop views cut with the crop manifest's geometry, plus NeCo's photometric augmentation.

Geometry comes from the manifest (``neco.method.manifest``), so it is versioned with the data;
only the photometric part is random here, and it is drawn from a ``numpy`` generator seeded by
``(seed, epoch, image index, view)`` so that a sample is the same whatever the worker layout.

Photometric augmentation (method.md §2), per crop, in this order:

1. ``ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` with p = 0.8 (the four adjustments in a random
   order, factors drawn like torchvision's ``ColorJitter.get_params``), s = ``jitter_strength``;
2. ``RandomGrayscale(p = 0.2)``;
3. PIL Gaussian blur with radius ~ U[0.1 s', 2.0 s'] with p = 0.5, s' = ``blur_strength``;
4. to tensor and ImageNet normalisation.

No flip and no solarization (they are not in the official recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PhotometricParams:
    """Photometric augmentation strengths (method.md §2).

    Attributes:
        jitter_strength: s in ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) (official 1.0).
        blur_strength: s' in the blur radius range [0.1 s', 2.0 s'] (official 1.0).
    """

    jitter_strength: float
    blur_strength: float


def sample_rng(seed: int, epoch: int, index: int, view: int) -> np.random.Generator:
    """The generator of one (image, epoch, view), independent of worker layout."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index, view])))


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with torchvision's parameter semantics."""
    b = c = s = 0.8 * strength
    h = 0.2 * strength
    order = rng.permutation(4)
    factors = (
        rng.uniform(max(0.0, 1 - b), 1 + b),
        rng.uniform(max(0.0, 1 - c), 1 + c),
        rng.uniform(max(0.0, 1 - s), 1 + s),
        rng.uniform(-min(h, 0.5), min(h, 0.5)),
    )
    # torchvision skips an adjustment whose range is degenerate (strength 0): adjust_hue(0) is
    # not an identity (HSV round trip), so s = 0 must not call it.
    active = (b > 0, c > 0, s > 0, h > 0)
    for op in order:
        if not active[op]:
            continue
        if op == 0:
            img = TF.adjust_brightness(img, float(factors[0]))
        elif op == 1:
            img = TF.adjust_contrast(img, float(factors[1]))
        elif op == 2:
            img = TF.adjust_saturation(img, float(factors[2]))
        else:
            img = TF.adjust_hue(img, float(factors[3]))
    return img


def photometric(
    img: Image.Image, params: PhotometricParams, rng: np.random.Generator
) -> Image.Image:
    """Apply NeCo's photometric augmentation to one RGB crop."""
    if rng.random() < 0.8:
        img = color_jitter(img, params.jitter_strength, rng)
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.5:
        radius = rng.uniform(0.1 * params.blur_strength, 2.0 * params.blur_strength)
        img = img.filter(ImageFilter.GaussianBlur(radius=float(radius)))
    return img


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 ``(3, H, W)`` normalised with the ImageNet mean and std."""
    t = TF.to_tensor(img)
    normalised: torch.Tensor = TF.normalize(t, IMAGENET_MEAN, IMAGENET_STD)
    return normalised


def cut_crop(img: Image.Image, box: np.ndarray, size: int) -> Image.Image:
    """``RandomResizedCrop`` semantics: crop ``(x, y, w, h)`` then bilinear resize to ``size``².

    Exactly torchvision's ``F.resized_crop`` on a PIL image (crop first, then resize): the
    filter sees only the crop's pixels. ``Image.resize(box=...)`` would differ at the crop edges,
    where its filter support reaches pixels outside the box.
    """
    x, y, w, h = (int(v) for v in box)
    return img.crop((x, y, x + w, y + h)).resize((size, size), Image.Resampling.BILINEAR)


def make_views(
    img: Image.Image,
    boxes: np.ndarray,
    sizes: np.ndarray,
    *,
    params: PhotometricParams,
    seed: int,
    epoch: int,
    index: int,
) -> list[torch.Tensor]:
    """Cut and augment every view of one image.

    Args:
        img: the RGB image.
        boxes: crop rectangles ``(C, 4)`` as ``(x, y, w, h)`` in original-image pixels.
        sizes: output side per view ``(C,)``.
        params: photometric strengths.
        seed, epoch, index: identify the sample for the photometric RNG.

    Returns:
        ``C`` normalised tensors ``(3, s_c, s_c)``.
    """
    views = []
    for view, (box, size) in enumerate(zip(boxes, sizes, strict=True)):
        crop = cut_crop(img, box, int(size))
        crop = photometric(crop, params, sample_rng(seed, epoch, index, view))
        views.append(to_normalised_tensor(crop))
    return views
