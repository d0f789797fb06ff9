"""The backbone registry as data: architecture, weight source and key map per name.

Sources: method.md §12 and evaluation.md §6 (DINOv2 and DINO URLs). ``dino_vitb16``'s URL is
the DINO README's full-checkpoint link (same pattern as ViT-S/16; not in the spec). No public
URL is known to the spec for iBOT, CrIBo, TimeT and Leopart: they need a local file
(``train.weights``). No checksum is published for any of these files (``sha256=None``); every
load report records the sha256 of the file actually loaded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

OVERRIDE_PARAM = "train.weights"
CACHE_PARAM = "train.weights_cache"


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched, read or mapped; the message says what to do."""


class SourceKind(str, enum.Enum):
    """Where a registered backbone's initial weights come from."""

    URL = "url"
    LOCAL_ONLY = "local_only"
    RANDOM = "random"


@dataclass(frozen=True)
class WeightSource:
    """Initial weights of one registered backbone.

    Attributes:
        kind: url, local_only or random.
        urls: mirrors tried in order (empty unless ``kind`` is url).
        filename: cache file name under the cache directory (url kind), or the expected
            official file name (local_only kind, for the error message).
        sha256: checksum of the file, when published or verified; ``None`` if unknown.
        note: provenance (spec section) or why no URL is known.
    """

    kind: SourceKind
    urls: tuple[str, ...]
    filename: str | None
    sha256: str | None
    note: str


def url_source(url: str, *, note: str, sha256: str | None = None) -> WeightSource:
    """A single-URL source whose cache file name is the URL's basename."""
    return WeightSource(
        kind=SourceKind.URL,
        urls=(url,),
        filename=Path(urlparse(url).path).name,
        sha256=sha256,
        note=note,
    )


def local_source(filename: str, *, note: str) -> WeightSource:
    """A source with no known public URL: the user must pass ``train.weights``."""
    return WeightSource(
        kind=SourceKind.LOCAL_ONLY, urls=(), filename=filename, sha256=None, note=note
    )


RANDOM_SOURCE = WeightSource(
    kind=SourceKind.RANDOM, urls=(), filename=None, sha256=None, note="random initialisation"
)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
        name: registry key (``train.backbone``).
        timm_name: timm architecture, created with ``pretrained=False``.
        timm_kwargs: extra ``timm.create_model`` arguments (e.g. the demo ViT's depth).
        patch_size: p.
        embed_dim: D.
        depth: number of blocks.
        num_heads: attention heads.
        num_registers: register tokens *in the model* (0 for XR).
        native_img_size: side in px of the pretraining grid (518, 224; 112 for the demo).
        weights: initial-weight source.
        key_map: format of the official weight file (:data:`neco.models.checkpoints.KEY_MAPS`).
    """

    name: str
    timm_name: str
    timm_kwargs: tuple[tuple[str, Any], ...]
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_registers: int
    native_img_size: int
    weights: WeightSource
    key_map: str


_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/{m}/{m}{reg}_pretrain.pth"
_DINO = "https://dl.fbaipublicfiles.com/dino/{m}_pretrain/{m}_pretrain_full_checkpoint.pth"
_SPEC_V2 = "method.md §12, evaluation.md §6"


def _v2(size: str, variant: str) -> BackboneSpec:
    """DINOv2 ViT-{S,B}/14: variant '' (plain), 'reg' (4 true registers) or 'xr'."""
    m = f"dinov2_vit{size}14"
    reg = "_reg4" if variant else ""
    arch = "small" if size == "s" else "base"
    timm_name = f"vit_{arch}_patch14_{'reg4_' if variant == 'reg' else ''}dinov2"
    return BackboneSpec(
        name=m + (f"_{variant}" if variant else ""),
        timm_name=timm_name,
        timm_kwargs=(),
        patch_size=14,
        embed_dim=384 if size == "s" else 768,
        depth=12,
        num_heads=6 if size == "s" else 12,
        num_registers=4 if variant == "reg" else 0,
        native_img_size=518,
        weights=url_source(_DINOV2.format(m=m, reg=reg), note=_SPEC_V2),
        key_map={"": "dinov2", "reg": "dinov2_reg", "xr": "dinov2_xr"}[variant],
    )


def _v1(name: str, size: str, weights: WeightSource, key_map: str) -> BackboneSpec:
    """A DINO-v1-architecture ViT-{S,B}/16 (qkv bias, LayerNorm eps 1e-6, no LayerScale)."""
    return BackboneSpec(
        name=name,
        timm_name=f"vit_{'small' if size == 's' else 'base'}_patch16_224",
        timm_kwargs=(),
        patch_size=16,
        embed_dim=384 if size == "s" else 768,
        depth=12,
        num_heads=6 if size == "s" else 12,
        num_registers=0,
        native_img_size=224,
        weights=weights,
        key_map=key_map,
    )


def _local(what: str) -> WeightSource:
    return local_source(what, note="no public URL in the spec; official code uses a local path")


_ENTRIES = [
    BackboneSpec(
        name="vit_tiny_demo",
        timm_name="vit_tiny_patch16_224",
        timm_kwargs=(("depth", 4),),
        patch_size=16,
        embed_dim=192,
        depth=4,
        num_heads=3,
        num_registers=0,
        native_img_size=112,
        weights=RANDOM_SOURCE,
        key_map="timm",
    ),
    *(_v2(size, variant) for size in ("s", "b") for variant in ("", "reg", "xr")),
    _v1("dino_vits16", "s", url_source(_DINO.format(m="dino_deitsmall16"), note=_SPEC_V2), "dino"),
    _v1(
        "dino_vitb16",
        "b",
        url_source(
            _DINO.format(m="dino_vitbase16"), note="DINO README full checkpoint (not in the spec)"
        ),
        "dino",
    ),
    _v1("ibot_vits16", "s", _local("iBOT ViT-S/16 checkpoint_teacher.pth"), "ibot"),
    _v1("ibot_vitb16", "b", _local("iBOT ViT-B/16 checkpoint_teacher.pth"), "ibot"),
    _v1("cribo_vits16", "s", _local("CrIBo ViT-S/16 checkpoint"), "cribo"),
    _v1("cribo_vitb16", "b", _local("CrIBo ViT-B/16 checkpoint"), "cribo"),
    _v1("timetuning_vits16", "s", _local("TimeT ViT-S/16 checkpoint"), "timetuning"),
    _v1("leopart_vits16", "s", _local("Leopart ViT-S/16 checkpoint"), "leopart"),
]

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _ENTRIES}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry, or a ``KeyError`` listing the valid names."""
    if name not in BACKBONES:
        raise KeyError(
            f"train.backbone: unknown backbone {name!r}; expected one of {sorted(BACKBONES)}"
        )
    return BACKBONES[name]
