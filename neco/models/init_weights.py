"""Where a run's initial backbone weights come from (the ``weights`` stage).

``train.weights`` (a local file in the backbone's official format, an exported safetensors file,
or ``random``) overrides the registry's official source; official files are downloaded once into
``train.weights_cache``. This module imports no torch, so an offline failure is reported within
about a second of the stage starting, naming the URL and the ``train.weights`` override.

The paper's baseline (:func:`baseline_backbone`): where a backbone's registry entry names a
``baseline`` (``dinov2_vit{s,b}14_xr`` -> ``dinov2_vit{s,b}14_reg``: the paper's "DINOv2R" row is
the hub register model, method.md §13), the ``weights`` stage also loads the *same* source file
strictly through the baseline's key map (registers kept) and writes it as the ``baseline`` eval
model. :func:`baseline_weights_source` says which file that is, or fails at once when none can be
had (an exported ``*.safetensors`` ``train.weights`` holds no register tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from neco.config import ConfigError
from neco.models.fetch import resolve_weights_file, weights_cache_dir
from neco.models.registry import BACKBONES, SourceKind, WeightsError

#: File names inside the ``weights`` stage output (``models/init``).
INIT_FILE = "init_backbone.safetensors"
BASELINE_FILE = "baseline_backbone.safetensors"


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


def baseline_backbone(backbone: str) -> str | None:
    """Registry name of ``backbone``'s paper-baseline model, ``None`` if it is the init itself.

    Raises:
        neco.config.ConfigError: unknown backbone, or a registry ``baseline`` that is not itself
            registered (a registry bug, reported rather than skipped).
    """
    if backbone not in BACKBONES:
        raise ConfigError(
            f"train.backbone: unknown backbone {backbone!r}; registered: {sorted(BACKBONES)}"
        )
    name = BACKBONES[backbone].baseline
    if name is not None and name not in BACKBONES:
        raise ConfigError(f"registry: baseline {name!r} of {backbone!r} is not registered")
    return name


def baseline_weights_source(params: WeightsParams, source: str) -> str | None:
    """The file (or ``random``) the paper-baseline model is built from; ``None`` if no baseline.

    It is ``source``, the init's own file: the baseline is the same weights under another
    architecture (``random``: a seeded random init of that architecture, no file to share).

    Args:
        params: the ``weights`` stage's ``train`` keys.
        source: what :func:`initial_weights_source` returned.

    Raises:
        neco.models.registry.WeightsError: ``train.weights`` is an exported ``*.safetensors``
            file, which holds the init architecture's tensors only (no register tokens).
    """
    name = baseline_backbone(params.backbone)
    if name is None:
        return None
    if source != "random" and source.endswith(".safetensors"):
        raise WeightsError(
            f"train.weights={source}: an exported file of {params.backbone!r}, which cannot "
            f"build the paper's baseline model {name!r} (its register tokens are not in it). "
            f"Set train.weights to the official weight file "
            f"({BACKBONES[params.backbone].weights.filename}) or to null (download it)"
        )
    return source
