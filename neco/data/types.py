"""The dataset contract shared by training, feature extraction and every eval protocol.

A segmentation dataset is a sequence of raw samples plus its label metadata. Protocols apply
their own transforms (evaluation.md §1.7), so samples are undecoded-by-policy: the image is
``uint8 (H, W, 3)`` RGB and the mask ``uint8 (H, W)`` class ids, never round-tripped
through float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SegSample:
    """One sample.

    Attributes:
        image: RGB image, ``uint8 (H, W, 3)``.
        mask: class ids, ``uint8 (H, W)``; ``ignore_index`` marks void pixels.
        id: the sample id (file stem), e.g. ``2007_000032``.
    """

    image: np.ndarray
    mask: np.ndarray
    id: str


@runtime_checkable
class SegDataset(Protocol):
    """What protocols need from a dataset: indexable samples plus label metadata.

    The metadata is read-only here (properties), so a plain attribute, a ``list`` or a
    property all implement it.
    """

    @property
    def ids(self) -> Sequence[str]: ...

    @property
    def class_names(self) -> Sequence[str]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def ignore_index(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> SegSample: ...
