"""Where a run's initial backbone weights come from (the ``weights`` stage).

``train.weights`` (a local file in the backbone's official format, an exported safetensors file,
or ``random``) overrides the registry's official source; official files are downloaded once into
``train.weights_cache``. This module imports no torch, so an offline failure is reported within
about a second of the stage starting, naming the URL and the ``train.weights`` override.
"""

from __future__ import annotations

from dataclasses import dataclass

from neco.config import ConfigError
from neco.models.fetch import resolve_weights_file, weights_cache_dir
from neco.models.registry import BACKBONES, SourceKind


@dataclass(frozen=True)
class WeightsParams:
    """The keys of the ``train`` section the ``weights`` stage reads.

    Attributes:
        backbone: registry key.
        weights: local weights file or ``random``; None = the official source.
        weights_cache: download cache directory; None = ``~/.cache/neco/weights``.
    """

    backbone: str
    weights: str | None
    weights_cache: str | None


def initial_weights_source(params: WeightsParams, *, progress: bool) -> str:
    """The file (or ``random``) the initial backbone is built from, fetching it if needed.

    Raises:
        neco.config.ConfigError: unknown backbone (listing the registered ones).
        neco.models.fetch.WeightsError: the official file cannot be had (offline: within seconds,
            naming the URL, the cache path and ``train.weights``).
    """
    if params.backbone not in BACKBONES:
        raise ConfigError(
            f"train.backbone: unknown backbone {params.backbone!r}; registered: {sorted(BACKBONES)}"
        )
    if params.weights is not None:
        return params.weights
    spec = BACKBONES[params.backbone]
    if spec.weights.kind is SourceKind.RANDOM:
        return "random"
    path = resolve_weights_file(
        params.backbone,
        spec.weights,
        cache_dir=weights_cache_dir(params.weights_cache),
        progress=progress,
    )
    return str(path)
