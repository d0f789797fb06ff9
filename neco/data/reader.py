"""Readers over the canonical prepared layout (datasets.md §9; evaluation.md §1.3, §1.4).

Ids come only from ``splits/<split>.txt`` (validated: sorted, unique, LF); images and masks are
paired by id, never by directory listing. Images are decoded with PIL ``convert('RGB')`` to
``uint8 (H, W, 3)`` (ADE20K, COCO and ImageNet contain greyscale and CMYK files); masks with
``np.array`` for modes 'L'/'P' only, ``uint8 (H, W)`` end to end. Every error names the file:
a missing one raises ``FileNotFoundError``, a bad one ``neco.data.errors.DataError``.

Both datasets hold only paths and lists, so they pickle cheaply into DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from neco.data.errors import DataError
from neco.data.label_png import check_label_values, image_size, read_label_png
from neco.data.meta import read_split
from neco.data.types import SegSample


@dataclass(frozen=True)
class ImageSample:
    """One unlabelled sample.

    Attributes:
        image: RGB image, ``uint8 (H, W, 3)``.
        id: the sample id, e.g. ``000000000139`` or ``n01440764/n01440764_10026``.
    """

    image: np.ndarray
    id: str


def split_path(root: Path, split: str) -> Path:
    """``<root>/splits/<split>.txt``; ``split`` may contain ``/`` (e.g. ``hbird/1_div_8/...``).

    Raises:
        ValueError: if ``split`` is empty, absolute or contains ``..``.
    """
    parts = PurePosixPath(split).parts
    if not split or split.startswith("/") or ".." in parts or "" in split.split("/"):
        raise ValueError(f"invalid split name {split!r}")
    return Path(root) / "splits" / f"{split}.txt"


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file to a fully loaded RGB PIL image.

    Raises:
        FileNotFoundError: naming the file.
        DataError: naming the file, when PIL cannot decode it (corrupt or truncated).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            rgb.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ...
        raise DataError(f"{path}: cannot decode image (corrupt or truncated?): {err}") from err
    return rgb


class ImageDataset:
    """Images of one split (no labels), for NeCo training and the crop manifest.

    Args:
        root: prepared dataset root.
        split: split name; ids are read from ``<root>/splits/<split>.txt``.
        image_dir: folder of the images relative to ``root`` (e.g. ``images/train2017``).
        image_ext: file extension including the dot (``.jpg``; ImageNet ``.JPEG``).
    """

    def __init__(self, root: Path, split: str, *, image_dir: str, image_ext: str) -> None:
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / image_dir
        self.image_ext = image_ext
        self.ids: list[str] = read_split(split_path(self.root, split))

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, index: int) -> Path:
        """Image file of sample ``index``."""
        return self.image_dir / f"{self.ids[index]}{self.image_ext}"

    def load(self, index: int) -> Image.Image:
        """Sample ``index`` as a loaded RGB PIL image."""
        return load_rgb(self.path(index))

    def size(self, index: int) -> tuple[int, int]:
        """Original ``(H, W)`` of sample ``index``, read from the file header only."""
        return image_size(self.path(index))

    def sizes(self) -> list[tuple[int, int]]:
        """Original ``(H, W)`` of every sample, in split order (header reads only)."""
        return [self.size(i) for i in range(len(self))]

    def __getitem__(self, index: int) -> ImageSample:
        return ImageSample(image=np.asarray(self.load(index), dtype=np.uint8), id=self.ids[index])


class SegmentationDataset:
    """Image/mask pairs of one split; implements ``neco.data.types.SegDataset``.

    Args:
        root: prepared dataset root.
        split: split name; ids are read from ``<root>/splits/<split>.txt``.
        image_dir: image folder relative to ``root`` (``images/trainaug``).
        mask_dir: mask folder relative to ``root`` (``masks/trainaug``, ``things/masks/val2017``).
        image_ext: image extension including the dot.
        num_classes: C; valid labels are ``[0, C) ∪ {ignore_index}``.
        ignore_index: void label (255; ADE20K 0).
        class_names: C names, index = class id.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        image_dir: str,
        mask_dir: str,
        image_ext: str,
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str],
    ) -> None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index {ignore_index} must be a uint8 value")
        self.images = ImageDataset(root, split, image_dir=image_dir, image_ext=image_ext)
        self.mask_dir = Path(root) / mask_dir
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names: list[str] = list(class_names)

    @property
    def ids(self) -> list[str]:
        """Sample ids in split order."""
        return self.images.ids

    @property
    def split(self) -> str:
        """Split name."""
        return self.images.split

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        """Image file of sample ``index``."""
        return self.images.path(index)

    def mask_path(self, index: int) -> Path:
        """Mask file of sample ``index``."""
        return self.mask_dir / f"{self.ids[index]}.png"

    def __getitem__(self, index: int) -> SegSample:
        image = np.asarray(self.images.load(index), dtype=np.uint8)
        mask_path = self.mask_path(index)
        mask = read_label_png(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from "
                f"image {self.image_path(index)} size {image.shape[1]}x{image.shape[0]}"
            )
        check_label_values(
            mask, num_classes=self.num_classes, ignore_index=self.ignore_index,
            source=str(mask_path),
        )
        return SegSample(image=image, mask=mask, id=self.ids[index])
