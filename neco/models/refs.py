"""Content identity of the weight files the params point at (`train.weights`, `eval.checkpoint`).

DVC tracks a param by its *value*, so overwriting the file behind ``train.weights`` or
``eval.checkpoint`` would leave the pipeline "up to date" with results of the old weights. The
``refs`` stage runs on every ``dvc repro`` (``always_changed``), resolves each of the two params
to a file (fetching a ``neco_release:`` file into the hub cache, so an offline run fails here,
first, naming the file) and writes the file's sha256. The ``weights`` stage depends on the
first record, the feature and eval stages on the second; when a file's content is unchanged the
record is byte-identical and nothing downstream re-runs. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neco.io import sha256_file
from neco.models.registry import OVERRIDE_PARAM, WeightsError
from neco.models.release import (
    CHECKPOINT_PARAM,
    RELEASE_REPO,
    REVISION_PARAM,
    get_release,
    release_name,
    resolve_release_file,
)


@dataclass(frozen=True)
class TrainRefParams:
    """The ``train`` key the ``refs`` stage reads (loaded with ``load_subset``)."""

    weights: str | None


@dataclass(frozen=True)
class EvalRefParams:
    """The ``eval`` keys the ``refs`` stage reads (loaded with ``load_subset``)."""

    checkpoint: str | None
    checkpoint_key: str
    release_revision: str


def _file_record(param: str, value: str) -> dict[str, Any]:
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(f"{param}={value}: no such file (expected a weight file)")
    return {"param": param, "value": value, "sha256": sha256_file(path)}


def train_weights_ref(weights: str | None) -> dict[str, Any]:
    """The record of ``train.weights``: null/``random`` as is, a file by its sha256."""
    if weights is None or weights == "random":
        return {"param": OVERRIDE_PARAM, "value": weights, "sha256": None}
    return _file_record(OVERRIDE_PARAM, weights)


def eval_checkpoint_ref(
    checkpoint: str | None, *, checkpoint_key: str, revision: str
) -> dict[str, Any]:
    """The record of ``eval.checkpoint``: a file or a ``neco_release:`` file by its sha256.

    Raises:
        WeightsError: a missing file, an unknown release, or a release file that is neither
            cached nor downloadable (offline: at once, naming the HF file and how to place it).
    """
    if checkpoint is None:
        return {"param": CHECKPOINT_PARAM, "value": None, "sha256": None}
    name = release_name(checkpoint)
    if name is None:
        return {**_file_record(CHECKPOINT_PARAM, checkpoint), "checkpoint_key": checkpoint_key}
    release = get_release(name)
    path = resolve_release_file(release, checkpoint_key, revision=revision)
    return {
        "param": CHECKPOINT_PARAM,
        "value": checkpoint,
        "checkpoint_key": checkpoint_key,
        "hf_repo": RELEASE_REPO,
        "hf_filename": release.filename(checkpoint_key),
        REVISION_PARAM: revision,
        "sha256": sha256_file(path),
    }
