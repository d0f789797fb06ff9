"""The backbone registry as data: one entry per backbone name holds everything about it.

Each :class:`BackboneSpec` carries the architecture (timm name and arguments, patch size,
registers), the initial-weight source and its key map, the training :class:`Recipe` and the
paper's labels (:class:`PaperLabels`), the timm ``default_cfg`` idea: adding a backbone is one
entry in ``_ENTRIES``. Consumers read it: ``neco.models.vit`` builds the model,
``neco.models.recipes`` resolves the recipe against params, ``neco.report.paper`` looks up the
published numbers. This module is a leaf (it imports nothing from ``neco``).

Weight sources: method.md §12 and evaluation.md §6 (DINOv2 and DINO URLs). ``dino_vitb16``'s URL
is the DINO README's full-checkpoint link (same pattern as ViT-S/16; not in the spec). iBOT,
CrIBo, Leopart and TimeT: the publishers' README links (``/work/shared/notes/checkpoints.md``
M5; Dropbox links with ``dl=1`` for a direct download; CrIBo: the ImageNet-1k checkpoints of the
KU Leuven data repository, the COCO ViT-S/16 one is ``.../datafile/159667`` via
``train.weights``). No publisher gives a checksum for any of these files, so every ``sha256`` is
``None`` (pin one only where a publisher publishes it); instead every load report records the
sha256 of the file actually read (``models/init/weights.json``, eval ``load_report``).

Recipes (method.md §12, the D1 defaults): ``experiments/configs/models/{small,base}/*.yml`` of
``vpariza/NeCo`` @ ``3932160`` (the ``config`` field). Entries without a released config say so:

* ``dinov2_vitb14`` lr 5e-6 / ``*_reg`` and ``*_xr`` ViT-B lr 1e-6: as released (method.md §12);
* ``dino_vitb16``, ``ibot_*``, ``cribo_*``: no released config; presumed ``neco_dino.yml`` with
  other weights (unverified; method.md §12). ViT-B/16 keeps B = 45 (unverified);
* ``vit_tiny_demo``: project CPU demo (112 px globals / 48 px locals, 3x3 local tokens).

``queue_length`` keeps the official constructor value 8192 where the queue is off (unused).

Paper labels (method.md §12-§13; ``neco.report.paper`` documents the lookup):

* ``dinov2_vit{s,b}14_xr`` is the paper's "NeCo (DINOv2R)": init rows "DINOv2R", NeCo rows
  "NeCo" (Tables 1a, 2, Figure 2), then the README's "NeCo on DINOv2R-XR".
* ``dinov2_vit{s,b}14_reg`` (true registers): init "DINOv2R" (presumed, unverified), NeCo only
  the README's "NeCo on DINOv2R"; ``dinov2_vit{s,b}14``: NeCo only the README's "NeCo on DINOv2".
* ViT-S/16 backbones (``dino``, ``timetuning``, ``leopart``): init rows by method name, NeCo
  rows from Table 3 ("NeCo (init: DINO)"), then the README ("NeCo on DINO").
* Backbones the paper never evaluated (the demo, ViT-B/16, iBOT, CrIBo) have no labels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

OVERRIDE_PARAM = "train.weights"
#: Key prefix of each network in a NeCo Lightning checkpoint (student ``model.``, teacher).
NECO_RELEASE_PREFIXES = {"student": "model.", "teacher": "teacher."}
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


def url_source(
    url: str, *, note: str, sha256: str | None = None, filename: str | None = None
) -> WeightSource:
    """A single-URL source; the cache file name is ``filename`` or the URL path's basename."""
    return WeightSource(
        kind=SourceKind.URL,
        urls=(url,),
        filename=filename or Path(urlparse(url).path).name,
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
class Recipe:
    """Backbone-specific training values (``params.yaml`` ``null`` = take these).

    Attributes:
        global_size: global crop side in px (518 DINOv2, 224 /16 backbones).
        local_size: local crop side in px (98 official).
        batch_size: images per step over all devices.
        lr_backbone: AdamW lr of the backbone parameter groups.
        epochs: training epochs.
        queue: reference patches from the FIFO queue (DINOv2 family) or from the batch.
        queue_length: slots per queue bank.
        queue_push_per_image: teacher patches pushed per image and step.
        config: provenance of the recipe.
    """

    global_size: int
    local_size: int
    batch_size: int
    lr_backbone: float
    epochs: int
    queue: bool
    queue_length: int
    queue_push_per_image: int
    config: str


@dataclass(frozen=True)
class PaperLabels:
    """The paper's labels for one of our backbones (``paper_results.csv`` columns).

    Attributes:
        arch: the CSV ``backbone`` label, e.g. ``ViT-S/14``.
        init: CSV ``method`` labels of the starting model, in lookup priority.
        neco: CSV ``method`` labels of NeCo trained from it, in lookup priority.
    """

    arch: str
    init: tuple[str, ...]
    neco: tuple[str, ...]


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
        recipe: training recipe (:mod:`neco.models.recipes` resolves it against params).
        paper: the paper's labels, ``None`` if the paper never evaluated this backbone.
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
    recipe: Recipe
    paper: PaperLabels | None


_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/{m}/{m}{reg}_pretrain.pth"
_DINO = "https://dl.fbaipublicfiles.com/dino/{m}_pretrain/{m}_pretrain_full_checkpoint.pth"
_SPEC_V2 = "method.md §12, evaluation.md §6"
_PRESUMED = "presumed models/small/neco_dino.yml (no released config; unverified)"


def _v2(size: str, variant: str) -> BackboneSpec:
    """DINOv2 ViT-{S,B}/14: variant '' (plain), 'reg' (4 true registers) or 'xr'."""
    m = f"dinov2_vit{size}14"
    reg = "_reg4" if variant else ""
    arch = "small" if size == "s" else "base"
    timm_name = f"vit_{arch}_patch14_{'reg4_' if variant == 'reg' else ''}dinov2"
    config_suffix = {"": "", "reg": "r", "xr": "r_xr"}[variant]
    config = f"models/{arch}/neco_dinov2{config_suffix}.yml"
    lr = 1e-5 if size == "s" else (5e-6 if variant == "" else 1e-6)
    init, neco = {
        "": ((), ("NeCo on DINOv2",)),
        "reg": (("DINOv2R",), ("NeCo on DINOv2R",)),
        "xr": (("DINOv2R",), ("NeCo", "NeCo on DINOv2R-XR")),
    }[variant]
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
        recipe=Recipe(
            global_size=518,
            local_size=98,
            batch_size=64 if size == "s" else 16,
            lr_backbone=lr,
            epochs=25,
            queue=True,
            queue_length=8192,
            queue_push_per_image=10,
            config=config,
        ),
        paper=PaperLabels(f"ViT-{size.upper()}/14", init, neco),
    )


def _v1(
    name: str,
    size: str,
    weights: WeightSource,
    key_map: str,
    *,
    config: str = _PRESUMED,
    paper_method: str | None = None,
) -> BackboneSpec:
    """A DINO-v1-architecture ViT-{S,B}/16 (qkv bias, LayerNorm eps 1e-6, no LayerScale).

    ``paper_method``: the paper's name of the initialisation (``DINO``, ``TimeT``, ...), if the
    paper evaluated it (Table 3 and the README).
    """
    paper = None
    if paper_method is not None:
        neco = (f"NeCo (init: {paper_method})", f"NeCo on {paper_method}")
        paper = PaperLabels(f"ViT-{size.upper()}/16", (paper_method,), neco)
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
        recipe=Recipe(
            global_size=224,
            local_size=98,
            batch_size=45,
            lr_backbone=1e-5,
            epochs=50,
            queue=False,
            queue_length=8192,
            queue_push_per_image=10,
            config=config,
        ),
        paper=paper,
    )


_IBOT = "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/{m}/checkpoint_teacher.pth"
_CRIBO = "https://rdr.kuleuven.be/api/access/datafile/{id}"
_LEOPART = "https://www.dropbox.com/s/0kjy61jh4i3vbnh/leopart_vits16.ckpt?dl=1"
_TIMET = (
    "https://www.dropbox.com/scl/fi/nnx2mm8ian9w49vstpgz0/TimeT.pth"
    "?rlkey=w9q3hvxd51nb63ammy33qhry0&dl=1"
)
# No sha256 below: none of these publishers gives one (checkpoints.md M5).


def _ibot(size: str) -> WeightSource:
    m = "vits_16" if size == "s" else "vitb_16"
    return url_source(
        _IBOT.format(m=m),
        filename=f"ibot_vit{size}16_checkpoint_teacher.pth",  # both sizes share the basename
        note="bytedance/ibot README (checkpoints.md M5)",
    )


def _cribo(size: str) -> WeightSource:
    return url_source(
        _CRIBO.format(id=159665 if size == "s" else 159666),
        filename=f"cribo_vit{size}16_in1k.pth",  # the URL has no file name
        note="tileb1/CrIBo README, ImageNet-1k checkpoint (checkpoints.md M5)",
    )


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
        recipe=Recipe(
            global_size=112,
            local_size=48,
            batch_size=16,
            lr_backbone=1e-4,
            epochs=10,
            queue=True,
            queue_length=2048,
            queue_push_per_image=10,
            config="project CPU demo (not a paper recipe)",
        ),
        paper=None,
    ),
    *(_v2(size, variant) for size in ("s", "b") for variant in ("", "reg", "xr")),
    _v1(
        "dino_vits16",
        "s",
        url_source(_DINO.format(m="dino_deitsmall16"), note=_SPEC_V2),
        "dino",
        config="models/small/neco_dino.yml",
        paper_method="DINO",
    ),
    _v1(
        "dino_vitb16",
        "b",
        url_source(
            _DINO.format(m="dino_vitbase16"), note="DINO README full checkpoint (not in the spec)"
        ),
        "dino",
    ),
    _v1("ibot_vits16", "s", _ibot("s"), "ibot"),
    _v1("ibot_vitb16", "b", _ibot("b"), "ibot"),
    _v1("cribo_vits16", "s", _cribo("s"), "cribo"),
    _v1("cribo_vitb16", "b", _cribo("b"), "cribo"),
    _v1(
        "timetuning_vits16",
        "s",
        url_source(_TIMET, note="SMSD75/Timetuning README (checkpoints.md M5)"),
        "timetuning",
        config="models/small/neco_timetuning.yml",
        paper_method="TimeT",
    ),
    _v1(
        "leopart_vits16",
        "s",
        url_source(_LEOPART, note="MkuuWaUjinga/leopart README (checkpoints.md M5)"),
        "leopart",
        config="models/small/neco_leopart.yml",
        paper_method="Leopart",
    ),
]

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _ENTRIES}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry, or a ``KeyError`` listing the valid names."""
    if name not in BACKBONES:
        raise KeyError(
            f"train.backbone: unknown backbone {name!r}; expected one of {sorted(BACKBONES)}"
        )
    return BACKBONES[name]
