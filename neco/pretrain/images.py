"""Pretraining images rendered in memory by the synthetic generator (no files, no labels).

The demo's pretraining split is the demo generator (``neco.data.sources.synthetic_images``)
with another seed: image i of seed s comes from ``SeedSequence([s, i])``, so a seed other than
the demo's gives images disjoint from the NeCo training and evaluation splits, drawn from the
same distribution. Each image goes through the same JPEG encoding as the written dataset.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch
from PIL import Image

from neco.config import ConfigError
from neco.data.sources.synthetic_images import SyntheticConfig, encode_jpeg, render


def render_images(
    generator: SyntheticConfig, *, seed: int, num_images: int
) -> list[torch.Tensor]:
    """``num_images`` unlabelled images of the generator ``generator`` reseeded with ``seed``.

    Args:
        generator: the demo generator block (``datasets.synthetic.generator``); its ``seed``
            is the demo's and must differ from ``seed``.
        seed: generator seed of the pretraining images.
        num_images: how many.

    Returns:
        uint8 tensors ``(3, H, W)`` (sizes vary as the generator draws them).

    Raises:
        ConfigError: ``seed`` equals the demo generator's seed (the images would overlap the
            NeCo training and evaluation splits), or ``num_images < 1``.
    """
    if seed == generator.seed:
        raise ConfigError(
            f"pretrain.generator_seed={seed} equals datasets.synthetic.generator.seed: the "
            "pretraining images would be the NeCo train/val images; choose another seed"
        )
    if num_images < 1:
        raise ConfigError(f"pretrain.num_images={num_images}: expected >= 1")
    cfg = dataclasses.replace(generator, seed=seed, num_train=num_images)
    out = []
    for i in range(num_images):
        image, _ = render(cfg, i, i)
        decoded = Image.open(io.BytesIO(encode_jpeg(image, cfg.jpeg_quality))).convert("RGB")
        out.append(torch.from_numpy(np.asarray(decoded).copy()).permute(2, 0, 1).contiguous())
    return out
