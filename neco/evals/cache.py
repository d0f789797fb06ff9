"""On-disk cache of val-split patch tokens (the `features` stage's output).

One file per (dataset, model): ``<dir>/<model>.pt`` holding ``tokens`` float32
``(N, s*s, D)`` in split order, the ``ids``, ``input_size``, ``patch_size`` and the settings that
produced it. Readers check that ids and input size match what they expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neco.io import atomic_path, is_rank_zero


def save_features(
    path: Path, *, tokens: torch.Tensor, ids: list[str], meta: dict[str, Any]
) -> None:
    """Atomically write cached tokens with their ids and settings."""
    if not is_rank_zero():
        return
    # Saved through a file object: torch.save names the zip's records after the file it is
    # given, so saving to the temporary path would embed a random name (different bytes on
    # every run, which would invalidate every downstream stage).
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as fh:
        torch.save({"tokens": tokens.contiguous(), "ids": list(ids), "meta": dict(meta)}, fh)


def load_features(path: Path, *, ids: list[str], input_size: int) -> torch.Tensor:
    """Read cached tokens, checking they belong to ``ids`` at ``input_size``.

    Raises:
        FileNotFoundError / ValueError: naming the file and the mismatch.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: cached features not found (written by the features@<dataset> stage)"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if list(blob["ids"]) != list(ids):
        raise ValueError(
            f"{path}: cached ids differ from the dataset split"
            f" ({len(blob['ids'])} vs {len(ids)})"
        )
    if int(blob["meta"]["input_size"]) != input_size:
        raise ValueError(
            f"{path}: cached at input size {blob['meta']['input_size']}, expected {input_size}"
        )
    tokens: torch.Tensor = blob["tokens"]
    return tokens


def load_features_meta(path: Path) -> dict[str, Any]:
    """The settings and provenance stored next to cached tokens (see :func:`save_features`).

    Memory-mapped: the tokens (GBs at paper scale) are not read just to get the metadata.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: cached features not found (written by the features@<dataset> stage)"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(blob["meta"])
