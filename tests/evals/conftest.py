"""Tiny in-memory datasets and feature extractors for the eval-protocol tests.

* :class:`ToyDataset` implements the ``SegDataset`` protocol over in-memory samples.
* Images paint every class with a fixed, well separated colour (:data:`PALETTE`), so
  :class:`ColourExtractor` can recover the class at each patch centre from the normalised image
  and return its one-hot vector: features that encode the class.
* :class:`RandomExtractor` returns features that carry no information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from neco.data.types import SegSample
from neco.evals.transforms import IMAGENET_MEAN, IMAGENET_STD

# black, white, grey, red, green, blue: robust to the Hummingbird jitter (hue ±0.1, b/c/s ±10 %)
PALETTE = np.array(
    [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
    dtype=np.uint8,
)


@dataclass
class ToyDataset:
    """``SegDataset`` over a list of samples."""

    samples: list[SegSample]
    class_names: Sequence[str]
    num_classes: int
    ignore_index: int

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> SegSample:
        return self.samples[index]


def block_dataset(
    n: int,
    *,
    num_classes: int,
    seed: int,
    ignore_index: int = 255,
    sizes: Sequence[int] = (40, 48, 56, 64),
    ignore_band: bool = True,
    extent: tuple[float, float] = (1 / 3, 1 / 2),
) -> ToyDataset:
    """Non-square images of 1-3 large rectangles of random classes over class 0.

    Rectangle sides are ``extent`` fractions of the image sides (clipped at the border). The image
    paints each class in its palette colour; the mask optionally marks every rectangle border
    (1 px) as ignored. The first object of image i has class ``i % (C-1) + 1``.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    samples = []
    for i in range(n):
        h, w = int(rng.choice(sizes)), int(rng.choice(sizes))
        label = np.zeros((h, w), dtype=np.uint8)
        border = np.zeros((h, w), dtype=bool)
        for r in range(int(rng.integers(1, 4))):
            cls = (i % (num_classes - 1)) + 1 if r == 0 else int(rng.integers(1, num_classes))
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            y1 = min(h, y0 + int(rng.integers(int(h * extent[0]), int(h * extent[1]) + 1)))
            x1 = min(w, x0 + int(rng.integers(int(w * extent[0]), int(w * extent[1]) + 1)))
            label[y0:y1, x0:x1] = cls
            border[y0:y1, x0:x1] = False
            border[y0:y1, [x0, x1 - 1]] = True
            border[[y0, y1 - 1], x0:x1] = True
        mask = np.where(border & ignore_band, np.uint8(ignore_index), label).astype(np.uint8)
        samples.append(SegSample(image=PALETTE[label], mask=mask, id=f"toy_{seed}_{i:04d}"))
    return ToyDataset(samples, [f"c{c}" for c in range(num_classes)], num_classes, ignore_index)


def band_dataset(
    n: int, *, num_classes: int, size: int, patch: int, seed: int, ignore_index: int = 255
) -> ToyDataset:
    """Square ``size²`` images of horizontal bands one patch row high, each row a random class
    (every class present in every image), so patch-aligned features determine every pixel."""
    rng = np.random.Generator(np.random.PCG64(seed))
    grid = size // patch
    samples = []
    for i in range(n):
        rows = np.concatenate(
            [np.arange(num_classes), rng.integers(0, num_classes, grid - num_classes)]
        )
        rng.shuffle(rows)
        mask = np.repeat(rows.astype(np.uint8), patch)[:, None].repeat(size, axis=1)
        samples.append(SegSample(image=PALETTE[mask], mask=mask, id=f"band_{seed}_{i:04d}"))
    return ToyDataset(samples, [f"c{c}" for c in range(num_classes)], num_classes, ignore_index)


class ColourExtractor:
    """Patch tokens = one-hot of the palette colour nearest to each patch-centre pixel.

    Works on any normalisation std close to ImageNet's; output ``(B, s*s, embed_dim)`` with the
    one-hot in the first ``len(PALETTE)`` dims and, if ``noise > 0``, Gaussian noise of that scale
    in the others (it breaks the exact ties between same-class tokens, so nearest neighbours are
    a random sample of the class instead of the lowest-indexed rows).
    """

    def __init__(
        self, patch_size: int, embed_dim: int = 8, noise: float = 0.0, seed: int = 0
    ) -> None:
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.noise = noise
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        rgb = (images * std + mean) * 255.0
        c = self.patch_size // 2
        centres = rgb[:, :, c :: self.patch_size, c :: self.patch_size]  # (B, 3, s, s)
        b = images.shape[0]
        x = centres.flatten(2).transpose(1, 2)  # (B, P, 3)
        pal = torch.tensor(PALETTE, dtype=torch.float32, device=images.device)
        cls = torch.cdist(x.reshape(-1, 3), pal).argmin(1).view(b, -1)
        out = torch.zeros(b, cls.shape[1], self.embed_dim)
        out[..., len(PALETTE) :] = self.noise * torch.randn(
            b, cls.shape[1], self.embed_dim - len(PALETTE), generator=self.gen
        )
        return out.scatter_(2, cls.unsqueeze(-1).cpu(), 1.0).to(images.device)


class RandomExtractor:
    """Tokens that carry no information: Gaussian noise from a private generator."""

    def __init__(self, patch_size: int, embed_dim: int, seed: int) -> None:
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        grid = images.shape[-1] // self.patch_size
        return torch.randn(images.shape[0], grid * grid, self.embed_dim, generator=self.gen)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)
