"""Label-map PNG decoding and deterministic encoding (datasets.md §0, evaluation.md §1.4).

Label PNGs are decoded to ``uint8`` indices **without colour conversion**: ``np.array(img)``
for modes 'L' and 'P' (a palette image yields its indices). ``convert('L')`` is never used: on
a palette PNG it computes luminance from the palette colours (VOC index 15, person, would
become 147). Masks are written as single-channel 'L' PNGs with fixed encoder settings, so a
rerun of a prepare stage produces byte-identical files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from neco.data.errors import DataError

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
        DataError: naming the file, for undecodable files and modes other than 'L'/'P'.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file not found")
    try:
        with Image.open(path) as img:
            mode = img.mode
            arr = np.array(img) if mode in LABEL_MODES else None
    except Exception as err:  # PIL raises several types for corrupt files
        raise DataError(f"{path}: cannot decode mask PNG (corrupt or truncated?): {err}") from err
    if arr is None:
        raise DataError(
            f"{path}: mask has PIL mode {mode!r}; expected one of {list(LABEL_MODES)} "
            "(single-channel class indices)"
        )
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise DataError(f"{path}: mask decoded to {arr.dtype} {arr.shape}; expected uint8 (H, W)")
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
        DataError: naming ``source`` and the offending values.
    """
    bad = (mask >= num_classes) & (mask != ignore_index)
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask[bad])})
        raise DataError(
            f"{source}: label value(s) {values[:10]} outside [0, {num_classes}) "
            f"and not the ignore index {ignore_index}"
        )


def _image_hw(path: Path, *, decode: bool) -> tuple[int, int]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if decode:
                img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ...
        what = "decode image (corrupt or truncated?)" if decode else "read image header"
        raise DataError(f"{path}: cannot {what}: {err}") from err
    return h, w


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header only.

    Raises:
        FileNotFoundError / DataError: naming the file.
    """
    return _image_hw(path, decode=False)


def decode_image(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file after decoding every pixel (``Image.open(path).load()``).

    Prepare stages call this once per image, so a truncated or corrupt file inside a good
    archive fails the prepare stage (naming it) instead of a data loader much later.

    Raises:
        FileNotFoundError / DataError: naming the file.
    """
    return _image_hw(path, decode=True)


def decode_images(paths: Sequence[Path], *, workers: int | None = None) -> list[tuple[int, int]]:
    """:func:`decode_image` of every path, in order, decoded by a thread pool.

    Pillow's decoders release the GIL, so the threads decode in parallel. The error of the
    first bad file *in ``paths`` order* is raised, so the message does not depend on timing.

    Args:
        paths: image files.
        workers: threads; None = ``min(8, os.cpu_count())``.
    """
    if len(paths) < 2:
        return [decode_image(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(decode_image, paths))
