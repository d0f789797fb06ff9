"""Deterministic procedural demo segmentation dataset in the Pascal VOC 2012 raw layout.

datasets.md §11 (project decision): a tiny dataset that lets the whole pipeline (VOC prepare
with SBD disabled, NeCo training, linear, clustering and Hummingbird evaluation) run offline on
a CPU. ``generate`` is the synthetic source's "download" (``neco.data.registry``).

Classes (C = 7): 0 background plus 3 shapes x 2 textures, so neither shape nor texture alone
identifies a class. Object and background colours come from one distribution for every class,
so colour alone carries no class information (acceptance test: a colour-histogram classifier is
at chance, <= 1/6 + 0.10 on val foreground pixels).

Written under ``raw_dir``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg             RGB, quality 95, 4:4:4, not optimised
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      'P' with the VOC palette, 0..6 and 255
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    manifest.json                                      version, params, counts, md5s

Ids ``demo_000001`` ... : the first ``num_train`` are ``train``, the rest ``val``.

Determinism: image i is drawn from its own ``Generator(PCG64(SeedSequence([seed, i])))`` with
integer and float64 ``+ - * / sqrt floor`` only (see ``synthetic_shapes``), so the pre-encoding
arrays (``manifest.json`` ``arrays``) are identical on every platform. File bytes (``files``)
are identical for the same Pillow build; JPEG and zlib implementations may differ elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neco.config import ConfigError
from neco.data.sources.synthetic_shapes import (
    Shape,
    Texture,
    boundary_band,
    low_frequency_field,
    pixel_grid,
    pixel_noise,
    random_rotation,
    sample_colour_pair,
    shape_mask,
    texture_mask,
    voc_palette,
)

GENERATOR_VERSION = "1"
IGNORE_INDEX = 255
# (shape, texture) of classes 1..6 (datasets.md §11 class table).
CLASS_TABLE: tuple[tuple[Shape, Texture], ...] = (
    (Shape.DISK, Texture.STRIPES),
    (Shape.DISK, Texture.CHECKER),
    (Shape.SQUARE, Texture.STRIPES),
    (Shape.SQUARE, Texture.CHECKER),
    (Shape.TRIANGLE, Texture.STRIPES),
    (Shape.TRIANGLE, Texture.CHECKER),
)
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(
    f"{shape.value}_{texture.value}" for shape, texture in CLASS_TABLE
)
_VOC = Path("VOCdevkit") / "VOC2012"


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator parameters (``datasets.synthetic.generator`` in ``params.yaml``).

    Attributes:
        seed: generator seed; image i uses ``SeedSequence([seed, i])``.
        num_train: images in ``train`` (demo 96).
        num_val: images in ``val`` (demo 32).
        sizes: image heights and widths, each drawn independently from this list (pixels).
        objects_min: minimum objects per image (>= 1).
        objects_max: maximum objects per image.
        object_frac_min: minimum object size as a fraction of the short image side; the size
            is the diameter of the disk of equal area.
        object_frac_max: maximum object size, same unit.
        texture_period_min: minimum full period of stripes/checker, pixels.
        texture_period_max: maximum full period, pixels.
        colour_min_sv: lower bound of HSV saturation and value, S, V ~ U[colour_min_sv, 1].
        colour_min_contrast: minimum RGB distance of the two colours of an object or of the
            background, 0..255 units.
        background_cells: cells per side of the background's low-frequency noise grid.
        boundary_width: void (255) band half-width w at every label boundary, pixels.
        difficult_prob: probability that an object (other than the first) is void as a whole.
        noise_sigma: pixel noise standard deviation, 0..255 units.
        jpeg_quality: JPEG quality (95; subsampling 4:4:4 and no optimisation are fixed).
    """

    seed: int
    num_train: int
    num_val: int
    sizes: list[int]
    objects_min: int
    objects_max: int
    object_frac_min: float
    object_frac_max: float
    texture_period_min: float
    texture_period_max: float
    colour_min_sv: float
    colour_min_contrast: float
    background_cells: int
    boundary_width: int
    difficult_prob: float
    noise_sigma: float
    jpeg_quality: int


def validate_config(cfg: SyntheticConfig) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) naming the key if a value is out of range."""
    checks: list[tuple[str, bool, str]] = [
        ("num_train", cfg.num_train >= 1, ">= 1"),
        ("num_val", cfg.num_val >= 1, ">= 1"),
        ("sizes", len(cfg.sizes) > 0 and all(s >= 16 for s in cfg.sizes), "non-empty, >= 16"),
        ("objects_min", cfg.objects_min >= 1, ">= 1"),
        ("objects_max", cfg.objects_max >= cfg.objects_min, ">= objects_min"),
        ("object_frac_min", 0.0 < cfg.object_frac_min, "> 0"),
        (
            "object_frac_max",
            cfg.object_frac_min <= cfg.object_frac_max <= 1.0,
            "in [object_frac_min, 1]",
        ),
        ("texture_period_min", cfg.texture_period_min >= 2.0, ">= 2"),
        (
            "texture_period_max",
            cfg.texture_period_max >= cfg.texture_period_min,
            ">= texture_period_min",
        ),
        ("colour_min_sv", 0.0 <= cfg.colour_min_sv <= 1.0, "in [0, 1]"),
        ("colour_min_contrast", 0.0 <= cfg.colour_min_contrast <= 200.0, "in [0, 200]"),
        ("background_cells", cfg.background_cells >= 1, ">= 1"),
        ("boundary_width", cfg.boundary_width >= 0, ">= 0"),
        ("difficult_prob", 0.0 <= cfg.difficult_prob <= 1.0, "in [0, 1]"),
        ("noise_sigma", cfg.noise_sigma >= 0.0, ">= 0"),
        ("jpeg_quality", 1 <= cfg.jpeg_quality <= 100, "in [1, 100]"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(
                f"datasets.synthetic.generator.{key}={getattr(cfg, key)!r}: expected {expected}"
            )


def image_id(index: int) -> str:
    """Id of the 0-based image ``index``: ``demo_000001`` for 0."""
    return f"demo_{index + 1:06d}"


def render(cfg: SyntheticConfig, index: int, split_position: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask.

    Objects are painted bottom to top; the first object (class ``1 + split_position % 6``,
    round-robin within the split) is painted last, so it is never hidden and never "difficult".

    Args:
        cfg: generator parameters.
        index: global 0-based image index (selects the random stream).
        split_position: position of the image within its split (selects the first class).

    Returns:
        ``image`` ``uint8 (H, W, 3)`` and ``mask`` ``uint8 (H, W)`` in {0..6, 255}.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, index])))
    sizes = np.asarray(cfg.sizes, dtype=np.int64)
    height, width = int(sizes[rng.integers(len(sizes))]), int(sizes[rng.integers(len(sizes))])
    yy, xx = pixel_grid(height, width)

    def colour_pair() -> np.ndarray:
        return sample_colour_pair(
            rng, sv_min=cfg.colour_min_sv, min_contrast=cfg.colour_min_contrast
        )

    bg = colour_pair()
    t = low_frequency_field(rng, height, width, cells=cfg.background_cells)[..., None]
    image = bg[0] + (bg[1] - bg[0]) * t
    labels = np.zeros((height, width), dtype=np.uint8)
    owner = np.full((height, width), -1, dtype=np.int64)

    n_obj = int(rng.integers(cfg.objects_min, cfg.objects_max + 1))
    first = 1 + split_position % len(CLASS_TABLE)
    others = [int(c) for c in rng.integers(1, len(CLASS_TABLE) + 1, size=n_obj - 1)]
    classes = others + [first]  # z-order: the round-robin object on top
    short = min(height, width)
    difficult = []
    for k, cls in enumerate(classes):
        shape, texture = CLASS_TABLE[cls - 1]
        size = short * (
            cfg.object_frac_min + (cfg.object_frac_max - cfg.object_frac_min) * rng.random()
        )
        cy = size / 2.0 + (height - size) * rng.random()
        cx = size / 2.0 + (width - size) * rng.random()
        inside = shape_mask(shape, yy, xx, cy=cy, cx=cx, size=size, rot=random_rotation(rng))
        period = (
            cfg.texture_period_min
            + (cfg.texture_period_max - cfg.texture_period_min) * rng.random()
        )
        tex = texture_mask(
            texture,
            yy,
            xx,
            period=period,
            rot=random_rotation(rng),
            phase=(float(rng.random()), float(rng.random())),
        )
        colours = colour_pair()
        image[inside] = np.where(tex[inside, None], colours[1], colours[0])
        labels[inside] = cls
        owner[inside] = k
        is_difficult = bool(rng.random() < cfg.difficult_prob)
        if is_difficult and k < len(classes) - 1:
            difficult.append(k)

    image = image + pixel_noise(rng, image.shape, sigma=cfg.noise_sigma)
    image_u8 = np.rint(np.clip(image, 0.0, 255.0)).astype(np.uint8)
    mask = labels.copy()
    mask[boundary_band(labels, cfg.boundary_width)] = IGNORE_INDEX
    for k in difficult:
        mask[owner == k] = IGNORE_INDEX
    return image_u8, mask


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes with fixed settings: ``quality``, 4:4:4, no optimisation, no metadata."""
    buf = io.BytesIO()
    Image.fromarray(image).save(
        buf, format="JPEG", quality=quality, subsampling=0, optimize=False, progressive=False
    )
    return buf.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Palette PNG ('P', VOC palette) with fixed encoder settings; indices equal ``mask``."""
    img = Image.fromarray(mask)
    img.putpalette(voc_palette())  # 'L' -> 'P', indices unchanged
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _write(root: Path, rel: Path, data: bytes, files: dict[str, str]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files[rel.as_posix()] = _md5(data)


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` onto ``dest``, replacing an existing ``dest``."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dest)


def generate(cfg: SyntheticConfig, raw_dir: Path, *, progress: bool) -> dict[str, Any]:
    """Write the demo dataset under ``raw_dir`` (replaced atomically as a whole).

    Args:
        cfg: generator parameters.
        raw_dir: destination, e.g. ``data/raw/synthetic``; its parent is created.
        progress: print a line per 32 images to stderr.

    Returns:
        The ``manifest.json`` content.
    """
    validate_config(cfg)
    raw_dir = Path(raw_dir)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{raw_dir.name}.tmp.", dir=raw_dir.parent))
    try:
        files: dict[str, str] = {}
        arrays: dict[str, dict[str, str]] = {}
        splits: dict[str, list[str]] = {"train": [], "val": []}
        total = cfg.num_train + cfg.num_val
        for index in range(total):
            split = "train" if index < cfg.num_train else "val"
            position = index if split == "train" else index - cfg.num_train
            sid = image_id(index)
            image, mask = render(cfg, index, position)
            _write(
                tmp, _VOC / "JPEGImages" / f"{sid}.jpg", encode_jpeg(image, cfg.jpeg_quality), files
            )
            _write(tmp, _VOC / "SegmentationClass" / f"{sid}.png", encode_mask_png(mask), files)
            arrays[sid] = {
                "image_md5": _md5(image.tobytes()),
                "mask_md5": _md5(mask.tobytes()),
                "shape": f"{image.shape[0]}x{image.shape[1]}",
            }
            splits[split].append(sid)
            if progress and ((index + 1) % 32 == 0 or index + 1 == total):
                print(f"synthetic: {index + 1}/{total} images", file=sys.stderr)
        splits["trainval"] = sorted(splits["train"] + splits["val"])
        for name, ids in splits.items():
            text = "".join(f"{i}\n" for i in sorted(ids))
            _write(tmp, _VOC / "ImageSets" / "Segmentation" / f"{name}.txt", text.encode(), files)
        manifest: dict[str, Any] = {
            "generator": "neco.data.sources.synthetic_images",
            "generator_version": GENERATOR_VERSION,
            "seed": cfg.seed,
            "params": asdict(cfg),
            "splits": {name: len(ids) for name, ids in splits.items()},
            "class_names": list(CLASS_NAMES),
            "classes": [
                {"index": i + 1, "name": CLASS_NAMES[i + 1], "shape": s.value, "texture": t.value}
                for i, (s, t) in enumerate(CLASS_TABLE)
            ],
            "ignore_index": IGNORE_INDEX,
            "files": files,
            "arrays": arrays,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        (tmp / "manifest.json").write_text(text, encoding="utf-8")
        _replace_dir(tmp, raw_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest
