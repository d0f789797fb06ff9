"""Image and mask operations of the eval protocols, with explicit random generators.

Each protocol resizes images and masks with specific ops, and nearest variants sample different
pixels (evaluation.md §1.4), so the ops are named after what they reproduce:

* PIL ``BILINEAR`` image resize / PIL ``NEAREST`` mask resize (source ``floor((x + 0.5)·r)``);
* torch ``F.interpolate(mode='nearest')`` (source ``floor(x·r)``) and ``'nearest-exact'``.

Randomness never touches the global RNG: :func:`derived_generator` builds a ``torch.Generator``
from integer keys such as ``(seed, epoch, image index)``. The crop and jitter ops call
torchvision's own ``RandomResizedCrop.get_params`` and ``ColorJitter`` inside :func:`on_generator`,
which runs torchvision's global-RNG draws on that generator's stream (and advances it) while the
global RNG is forked and left as it was; so with equal generator state they return exactly what
torchvision returns from the global RNG.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from neco.config.evals import ImageStd, JitterConfig, MaskResize
from neco.method.augment import IMAGENET_MEAN, IMAGENET_STD

# Hummingbird's std typo (0.255 for blue), present in every HB version (evaluation.md §1.3).
HBIRD_TYPO_STD: tuple[float, float, float] = (0.229, 0.224, 0.255)


def std_values(image_std: ImageStd) -> tuple[float, float, float]:
    """The per-channel std of ``image_std``."""
    return IMAGENET_STD if image_std is ImageStd.correct else HBIRD_TYPO_STD


def derived_generator(*keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from integer (or string) keys via ``numpy.SeedSequence``.

    Distinct key tuples give statistically independent streams, independent of call order, so
    per-sample augmentation is reproducible with any number of loader workers.

    Raises:
        ValueError: a negative integer key.
    """
    entropy = []
    for key in keys:
        value = zlib.crc32(key.encode("utf-8")) if isinstance(key, str) else int(key)
        if value < 0:
            raise ValueError(f"derived_generator: keys must be non-negative, got {keys!r}")
        entropy.append(value)
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    seed = (int(state[0]) << 31) ^ int(state[1])  # < 2**63
    return torch.Generator().manual_seed(seed)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` that copies read-only or non-contiguous arrays (e.g. from PIL)."""
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def to_normalised(image: np.ndarray | torch.Tensor, image_std: ImageStd) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` array or ``(3, H, W)`` tensor -> normalised float32 ``(3, H, W)``."""
    x = as_tensor(image).permute(2, 0, 1) if isinstance(image, np.ndarray) else image
    if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"to_normalised: expected uint8 (3, H, W), got {x.dtype} {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(std_values(image_std)).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def pil_resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """PIL bilinear resize of uint8 ``(H, W, 3)`` to ``(size, size, 3)`` (as torchvision Resize)."""
    pil = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def pil_resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """PIL ``NEAREST`` resize of a uint8 ``(H, W)`` label map to ``(size, size)``."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"pil_resize_mask: expected uint8 (H, W), got {mask.dtype} {mask.shape}")
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def nearest_source_indices(
    in_size: int, out_size: int, mode: MaskResize, device: torch.device | None = None
) -> torch.Tensor:
    """Source index of every output pixel of torch's nearest op along one axis, int64 ``(out,)``.

    Obtained by running ``F.interpolate`` itself on ``arange(in_size)`` (exact in float32), so it
    reproduces torch's own float index arithmetic rather than the ideal formula.
    """
    src = torch.arange(in_size, dtype=torch.float32, device=device).view(1, 1, in_size)
    return F.interpolate(src, size=out_size, mode=mode.value).view(-1).long()


def torch_resize_mask(mask: torch.Tensor, size: int, mode: MaskResize) -> torch.Tensor:
    """torch nearest resize of integer label maps ``(..., H, W)`` to ``(..., size, size)``.

    Gathers with :func:`nearest_source_indices`, so it works for every integer dtype (torch's
    ``interpolate`` supports only uint8 among them) and never round-trips labels through float.
    """
    if mask.is_floating_point() or mask.ndim < 2:
        raise ValueError(f"torch_resize_mask: expected integer (..., H, W), got {mask.dtype}")
    rows = nearest_source_indices(mask.shape[-2], size, mode, mask.device)
    cols = nearest_source_indices(mask.shape[-1], size, mode, mask.device)
    return mask[..., rows[:, None], cols[None, :]]


@contextlib.contextmanager
def on_generator(generator: torch.Generator) -> Iterator[None]:
    """Run the global-RNG draws of the block (torchvision's) on ``generator``'s stream.

    Inside ``torch.random.fork_rng(devices=[])``, the CPU global RNG is loaded with ``generator``'s
    state, and on exit ``generator`` takes the advanced state: the block's draws are exactly the
    draws it would make from ``generator`` directly, later draws from ``generator`` continue the
    same stream, and the global RNG is restored. Loading the state rather than calling
    ``torch.manual_seed`` keeps the CUDA generators untouched (``manual_seed`` reseeds them too,
    outside what ``fork_rng(devices=[])`` restores).
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.random.get_rng_state())


def check_crop_params(key: str, scale: Sequence[float], ratio: Sequence[float]) -> None:
    """Check a protocol's ``RandomResizedCrop`` ranges before any work is done.

    ``scale`` (area fraction; may exceed 1, Hummingbird uses ``[0.5, 2.0]``) and ``ratio``
    (aspect w / h, sampled log-uniformly) must be ``[lo, hi]`` with finite ``0 < lo <= hi``;
    otherwise torchvision fails later with a bare "math domain error".

    Args:
        key: params key of the protocol section, e.g. ``eval.linear`` or ``eval.hbird``.
        scale: its ``crop_scale``.
        ratio: its ``crop_ratio``.

    Raises:
        ConfigError: naming ``<key>.crop_scale`` / ``<key>.crop_ratio``, the value and the range.
    """
    from neco.config import ConfigError

    for name, pair in (("crop_scale", scale), ("crop_ratio", ratio)):
        values = list(pair)
        finite = all(isinstance(v, (int, float)) and np.isfinite(v) for v in values)
        if len(values) != 2 or not finite or not 0 < values[0] <= values[1]:
            raise ConfigError(f"{key}.{name}={values}: expected [lo, hi] with finite "
                              "0 < lo <= hi")


def random_resized_crop_params(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` for a ``height × width`` image, drawn from
    ``generator`` (ten tries, then the centre fallback that scale > 1 triggers).

    Returns:
        ``(i, j, h, w)``: top, left, height, width.
    """
    shape_only = torch.empty(0, height, width)  # get_params reads only the image dimensions
    with on_generator(generator):
        i, j, h, w = T.RandomResizedCrop.get_params(shape_only, list(scale), list(ratio))
    return int(i), int(j), int(h), int(w)


def flip_draw(p: float, generator: torch.Generator) -> bool:
    """``RandomHorizontalFlip(p)``'s decision: ``rand(1) < p``."""
    return bool(torch.rand(1, generator=generator).item() < p)


def color_jitter(
    image: torch.Tensor, cfg: JitterConfig, generator: torch.Generator
) -> torch.Tensor:
    """Hummingbird jitter on a uint8 ``(3, H, W)`` tensor, drawn from ``generator``.

    ``[RandomApply([ColorJitter(brightness=b)], p), ... contrast, saturation, hue]``: per op one
    ``rand(1)``, skipped if ``p < u``, else torchvision's ``ColorJitter`` (its ``randperm(4)``
    and, unless the strength is 0, the factor draw). The apply decision compares ``u`` as a
    Python float: ``RandomApply`` compares the float32 tensor, i.e. with ``float32(p)``, which
    differs (with probability 2⁻²⁴) for a ``p`` such as 0.8 whose float32 rounds up; 0.5 is exact.
    """
    ops = (
        T.ColorJitter(brightness=cfg.brightness),
        T.ColorJitter(contrast=cfg.contrast),
        T.ColorJitter(saturation=cfg.saturation),
        T.ColorJitter(hue=cfg.hue),
    )
    with on_generator(generator):
        for op in ops:
            if cfg.p < torch.rand(1).item():
                continue
            image = op(image)
    return image


def crop_resize_image(
    image: torch.Tensor, box: tuple[int, int, int, int], size: int
) -> torch.Tensor:
    """Crop ``box = (i, j, h, w)`` of a float ``(3, H, W)`` tensor, bilinear+antialias to size²."""
    i, j, h, w = box
    out: torch.Tensor = TF.resized_crop(
        image, i, j, h, w, [size, size], TF.InterpolationMode.BILINEAR, antialias=True
    )
    return out


def crop_resize_mask(mask: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop ``box`` of an integer ``(H, W)`` mask and torch-``nearest`` resize it to size²."""
    i, j, h, w = box
    return torch_resize_mask(mask[i : i + h, j : j + w], size, MaskResize.nearest)


def pil_crop_resize(
    image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Linear-probe train op: PIL crop, bilinear (image) / NEAREST (mask) to size², then flip.

    Args:
        image: uint8 ``(H, W, 3)``.
        mask: uint8 ``(H, W)``.
        box: ``(i, j, h, w)`` from :func:`random_resized_crop_params`.
        size: output side S.
        flip: whether to flip both horizontally.

    Returns:
        uint8 ``(S, S, 3)`` image and uint8 ``(S, S)`` mask.
    """
    i, j, h, w = box
    crop = (j, i, j + w, i + h)
    img = Image.fromarray(image).crop(crop).resize((size, size), Image.Resampling.BILINEAR)
    msk = Image.fromarray(mask).crop(crop).resize((size, size), Image.Resampling.NEAREST)
    img_a, msk_a = np.asarray(img), np.asarray(msk)
    if flip:
        img_a, msk_a = img_a[:, ::-1], msk_a[:, ::-1]
    return np.array(img_a), np.array(msk_a)
