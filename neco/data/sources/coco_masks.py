"""COCO-Things / COCO-Stuff mask conversion (datasets.md §4.4), pure array functions.

* Things: panoptic PNG (RGB, segment id = R + 256·G + 65536·B, 0 = void) -> semantic category
  ids via ``segments_info`` (crowd segments included, as panopticapi's
  ``panoptic2semantic_segmentation.py`` without ``--things_other``) -> 12 super-classes.
* Stuff: pixelmap indices (0 unlabelled, 92..182 stuff, 183 other) -> 15 super-classes.
* Optional cross-check: regenerate a stuff map from the JSON RLE annotations with pycocotools
  (``annToMask`` semantics, painted in JSON order).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neco.data.errors import DataError
from neco.data.sources.coco_categories import IGNORE


def read_panoptic_ids(path: Path) -> np.ndarray:
    """Decode a panoptic PNG to segment ids.

    Args:
        path: RGB PNG from ``panoptic_{split}2017.zip``.

    Returns:
        ``uint32 (H, W)`` with ``id = R + 256·G + 65536·B``.

    Raises:
        DataError: naming the file if it cannot be decoded or is not mode 'RGB'.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            rgb = np.array(img) if mode == "RGB" else None
    except Exception as err:  # PIL raises several types for corrupt files
        raise DataError(f"{path}: cannot decode panoptic PNG (corrupt or truncated?): "
                        f"{err}") from err
    if rgb is None:
        raise DataError(f"{path}: panoptic PNG has mode {mode!r}; expected 'RGB' (id-encoded)")
    rgb = rgb.astype(np.uint32)
    ids: np.ndarray = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    return ids


def things_mask(seg_ids: np.ndarray, segments_info: Sequence[Mapping[str, Any]],
                lut: np.ndarray, *, source: str) -> np.ndarray:
    """Map panoptic segment ids to COCO-Things classes.

    Args:
        seg_ids: ``uint32 (H, W)`` segment ids (``read_panoptic_ids``).
        segments_info: the annotation's ``segments_info`` entries (``id``, ``category_id``;
            ``iscrowd`` is deliberately ignored). Pixels of ids not listed, and void 0, -> 255.
        lut: ``uint8 (256,)`` category id -> class (``coco_categories.things_lut``).
        source: name for error messages.

    Returns:
        ``uint8 (H, W)`` values 0..11 and 255.
    """
    seg_to_class: dict[int, int] = {}
    for seg in segments_info:
        try:
            sid, cid = int(seg["id"]), int(seg["category_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{source}: malformed segments_info entry {seg!r}") from err
        seg_to_class[sid] = int(lut[cid]) if 0 <= cid < lut.shape[0] else IGNORE
    seg_to_class[0] = IGNORE  # void, even if a (malformed) entry claims id 0
    uniq, inverse = np.unique(seg_ids, return_inverse=True)
    table = np.array([seg_to_class.get(int(u), IGNORE) for u in uniq], dtype=np.uint8)
    return table[inverse].reshape(seg_ids.shape)


def stuff_mask(pixelmap: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, int]:
    """Map stuff pixelmap indices to COCO-Stuff classes.

    Args:
        pixelmap: ``uint8 (H, W)`` raw indices (read with ``np.array``, never ``convert('L')``).
        lut: ``uint8 (256,)`` value -> class (``coco_categories.stuff_lut``).

    Returns:
        ``uint8 (H, W)`` values 0..14 and 255, and the number of pixels whose value is neither
        0, 183 nor a stuff category (mapped to 255, reported by the prepare stage).
    """
    out = lut[pixelmap]
    unexpected = int(((out == IGNORE) & (pixelmap != 0) & (pixelmap != 183)).sum())
    return out, unexpected


def regenerate_stuff_ids(annotations: Sequence[Mapping[str, Any]], height: int,
                         width: int) -> np.ndarray:
    """Paint stuff category ids from JSON annotations in order (pycocotools ``annToMask``).

    Args:
        annotations: entries of ``stuff_{split}2017.json`` for one image (RLE or polygons).
        height, width: image size.

    Returns:
        ``uint8 (H, W)`` category ids, 0 where no annotation paints.
    """
    from pycocotools import mask as mask_utils  # optional dependency, imported lazily

    out = np.zeros((height, width), dtype=np.uint8)
    for ann in annotations:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        with warnings.catch_warnings():  # pycocotools 2.0.x: numpy-2 `copy=` deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode([rle])[:, :, 0]
        out[m.astype(bool)] = int(ann["category_id"])
    return out
