"""Label-map PNG decoding and deterministic encoding (datasets.md §0, evaluation.md §1.4).

Label PNGs are decoded to ``uint8`` indices **without colour conversion**: ``np.array(img)``
for modes 'L' and 'P' (a palette image yields its indices). ``convert('L')`` is never used: on
a palette PNG it computes luminance from the palette colours (VOC index 15, person, would
become 147). Masks are written as single-channel 'L' PNGs with fixed encoder settings, so a
rerun of a prepare stage produces byte-identical files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

LABEL_MODES = ("L", "P")
# Fixed encoder settings: zlib level 6, no optimisation pass, no ancillary chunks.
PNG_COMPRESS_LEVEL = 6


def read_label_png(path: Path) -> np.ndarray:
    """Decode a label PNG to class indices.

    Args:
        path: a PNG in mode 'L' or 'P'.

    Returns:
        ``uint8 (H, W)`` indices.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: naming the file, for undecodable files and modes other than 'L'/'P'.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file not found")
    try:
        with Image.open(path) as img:
            mode = img.mode
            arr = np.array(img) if mode in LABEL_MODES else None
    except Exception as err:  # PIL raises several types for corrupt files
        raise ValueError(f"{path}: cannot decode mask PNG: {err}") from err
    if arr is None:
        raise ValueError(
            f"{path}: mask has PIL mode {mode!r}; expected one of {list(LABEL_MODES)} "
            "(single-channel class indices)"
        )
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"{path}: mask decoded to {arr.dtype} {arr.shape}; expected uint8 (H, W)")
    return arr


def encode_label_png(mask: np.ndarray) -> bytes:
    """Encode class indices as a deterministic mode-'L' PNG.

    Args:
        mask: ``uint8 (H, W)``.
    """
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"label mask must be uint8 (H, W), got {mask.dtype} {mask.shape}")
    img = Image.fromarray(np.ascontiguousarray(mask))
    if img.mode != "L":  # pragma: no cover - Pillow maps 2-D uint8 to 'L'
        raise ValueError(f"expected PIL mode 'L' for a uint8 mask, got {img.mode!r}")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_label_png(path: Path, mask: np.ndarray) -> None:
    """Write ``mask`` as a deterministic 'L' PNG (non-atomic: used inside a staging dir).

    Args:
        path: destination; its parent must exist.
        mask: ``uint8 (H, W)``.
    """
    path.write_bytes(encode_label_png(mask))


def check_label_values(
    mask: np.ndarray, *, num_classes: int, ignore_index: int, source: str
) -> None:
    """Check that every value lies in ``[0, num_classes) ∪ {ignore_index}``.

    Raises:
        ValueError: naming ``source`` and the offending values.
    """
    bad = (mask >= num_classes) & (mask != ignore_index)
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask[bad])})
        raise ValueError(
            f"{source}: label value(s) {values[:10]} outside [0, {num_classes}) "
            f"and not the ignore index {ignore_index}"
        )


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header only.

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as err:
        raise ValueError(f"{path}: cannot read image header: {err}") from err
    return h, w
