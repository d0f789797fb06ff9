"""The ViT backbones: registry name -> timm ViT + weights (method.md §4, §12).

``build_backbone(name, ...)`` returns a :class:`Backbone` around a
:class:`NecoVisionTransformer`, timm's ``VisionTransformer`` with only ``_pos_embed``
overridden so that position embeddings are resampled with the configured rule
(:mod:`neco.models.pos_embed`) for every input size, in training and evaluation alike; the rest
of the token path (prefix tokens, blocks, final norm) is timm's ``forward_features``. The
backbone's forward returns the **patch tokens after the final LayerNorm** with CLS and register
tokens dropped, ``(B, (H/p) * (W/p), D)`` row-major, at any input size that is a multiple of
the patch (non-square included; other sizes are floored on request).

Weight sources (``weights`` argument / ``train.weights``): ``None`` = the registry's official
source (downloaded into ``cache_dir`` once), ``"random"`` = seeded random init, a path = a local
file: ``*.safetensors`` written by :mod:`neco.models.export`, anything else a file in the backbone's
official format. Released NeCo weight files load through :func:`load_neco_checkpoint` (a local
``*_model.ckpt`` / ``*_teacher.ckpt``) or :func:`load_neco_release` (by release name, fetched
from HF ``FunAILab/NeCo``; :mod:`neco.models.release`).

Every :class:`Backbone` carries a ``load_report`` with at least ``source`` (the file, URL or
``random``), ``sha256`` (of the file actually read; ``None`` for random init) and ``key_map``.

Only ViT-S and ViT-B are registered (ViT-g needs SwiGLU; method.md §16 #15).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from neco.io import sha256_file
from neco.models.checkpoints import (
    KEY_MAPS,
    load_checkpoint,
    map_state_dict,
    neco_release_key_map,
    read_export_metadata,
    release_arch_of,
)
from neco.models.fetch import resolve_weights_file
from neco.models.pos_embed import PosEmbedInterp, parse_pos_embed_interp, resample_patch_pos_embed
from neco.models.registry import (
    NECO_RELEASE_PREFIXES,
    OVERRIDE_PARAM,
    BackboneSpec,
    SourceKind,
    WeightsError,
    get_spec,
)

_log = logging.getLogger(__name__)


class NecoVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` with the position embedding resampled by our rule.

    Only :meth:`_pos_embed` is overridden, so ``forward_features`` (and ``forward_intermediates``)
    run timm's own path: ``patch_embed`` -> ``_pos_embed`` -> ``patch_drop`` -> ``norm_pre`` ->
    ``blocks`` -> ``norm``. Adds no parameters or buffers: the ``state_dict`` is timm's.

    Attributes:
        pos_embed_interp: resampling rule for non-native grids (:mod:`neco.models.pos_embed`).
    """

    pos_embed_interp: PosEmbedInterp

    @classmethod
    def from_timm(
        cls, vit: VisionTransformer, pos_embed_interp: PosEmbedInterp | str
    ) -> NecoVisionTransformer:
        """Promote a model built by ``timm.create_model`` to this class, in place.

        timm's ViT entrypoints hard-code ``VisionTransformer``, so the architecture and its
        seeded init come from timm's registry unchanged and the instance's class is swapped
        (the subclass adds no state; ``torch.nn.utils.parametrize`` does the same).
        """
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"expected a timm VisionTransformer, got {type(vit).__name__}")
        if not isinstance(vit, cls):
            if type(vit) is not VisionTransformer:
                raise TypeError(f"cannot promote a {type(vit).__name__} to {cls.__name__}")
            vit.__class__ = cls
        if not vit.dynamic_img_size or vit.pos_embed is None or vit.cls_token is None:
            raise ValueError(
                "NecoVisionTransformer needs dynamic_img_size=True, a position embedding and a "
                "class token"
            )
        out: NecoVisionTransformer = vit  # type: ignore[assignment]
        out.pos_embed_interp = parse_pos_embed_interp(pos_embed_interp)
        return out

    @property
    def native_grid(self) -> tuple[int, int]:
        """``(M0, M1)``: the token grid the position embedding was learnt on."""
        grid = self.patch_embed.grid_size
        return int(grid[0]), int(grid[1])

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``_pos_embed`` with :func:`resample_patch_pos_embed` as the resampling rule.

        ``x`` is the ``(B, g0, g1, D)`` patch grid (``dynamic_img_size`` gives NHWC). Only the
        patch part of ``pos_embed`` is resampled; a prefix-token entry (``no_embed_class`` off)
        never is. Prefix tokens and the embedding are cast to the patch tokens' dtype: a no-op
        in fp32; under autocast the token stream stays in the autocast dtype.
        """
        b, g0, g1, dim = x.shape
        pos = self.pos_embed
        assert pos is not None  # checked in from_timm
        n_prefix_pos = 0 if self.no_embed_class else self.num_prefix_tokens
        patch_pos = resample_patch_pos_embed(
            pos[:, n_prefix_pos:], native_grid=self.native_grid, grid=(g0, g1),
            mode=self.pos_embed_interp,
        )  # fmt: skip
        x = x.reshape(b, g0 * g1, dim) + patch_pos.to(x.dtype)
        prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if n_prefix_pos:
            prefix = [torch.cat(prefix, dim=1) + pos[:, :n_prefix_pos]]
        x = torch.cat([t.to(x.dtype) for t in prefix] + [x], dim=1)
        out: torch.Tensor = self.pos_drop(x)
        return out


class Backbone(nn.Module):
    """A timm ViT returning final-norm patch tokens, with configurable pos-embed resampling.

    Attributes:
        vit: the :class:`NecoVisionTransformer` (its ``state_dict`` has timm names).
        spec: the registry entry.
        patch_size: p.
        embed_dim: D.
        num_prefix_tokens: 1 + registers (CLS and register tokens, dropped from the output).
        native_grid: ``(M0, M1)`` token grid of the native input size.
        pos_embed_interp: resampling rule for non-native grids (lives on ``vit``).
        load_report: where the weights came from: ``source``, ``sha256`` of the file read
            (``None`` for random init), ``key_map`` and the mapping details.
    """

    def __init__(
        self, vit: VisionTransformer, spec: BackboneSpec, pos_embed_interp: PosEmbedInterp | str
    ) -> None:
        super().__init__()
        self.vit: NecoVisionTransformer = NecoVisionTransformer.from_timm(vit, pos_embed_interp)
        self.spec = spec
        self.patch_size = spec.patch_size
        self.embed_dim = spec.embed_dim
        self.num_prefix_tokens = int(self.vit.num_prefix_tokens)
        self.native_grid = self.vit.native_grid
        self.load_report: dict[str, Any] = random_load_report(spec.name, seed=None)

    @property
    def pos_embed_interp(self) -> PosEmbedInterp:
        """The resampling rule (stored on ``vit``, which applies it)."""
        return self.vit.pos_embed_interp

    @pos_embed_interp.setter
    def pos_embed_interp(self, value: PosEmbedInterp | str) -> None:
        self.vit.pos_embed_interp = parse_pos_embed_interp(value)

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks (an indexable ``nn.Sequential``; for ``trainable_blocks``)."""
        return self.vit.blocks

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(H/p, W/p)``; raises if a side is not a multiple of the patch."""
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"backbone {self.spec.name!r}: input size {height}x{width} px is not a positive "
                f"multiple of the patch size {p}"
            )
        return height // p, width // p

    def forward_tokens(self, x: torch.Tensor, *, floor_to_patch: bool = False) -> torch.Tensor:
        """All tokens after the final norm, ``(B, num_prefix_tokens + N, D)``: timm's
        ``forward_features``.

        Args:
            x: normalised images ``(B, 3, H, W)``.
            floor_to_patch: accept sides that are not multiples of p and drop the trailing
                ``H mod p`` rows / ``W mod p`` columns of pixels, exactly as the official
                strided patch convolution does (98-px local crops with p = 16: 6x6 tokens,
                method.md §16 #14). ``False``: such inputs raise.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"backbone input: expected (B, 3, H, W), got {tuple(x.shape)}")
        p = self.patch_size
        if floor_to_patch:
            x = x[:, :, : x.shape[2] // p * p, : x.shape[3] // p * p]
        self.grid_size(int(x.shape[2]), int(x.shape[3]))  # validates the (floored) size
        out: torch.Tensor = self.vit.forward_features(x)
        return out

    def forward(self, x: torch.Tensor, *, floor_to_patch: bool = False) -> torch.Tensor:
        """Patch tokens ``(B, 3, H, W) -> (B, (H/p) * (W/p), D)``, final norm applied, row-major.

        CLS and register tokens are dropped; ``floor_to_patch`` as in :meth:`forward_tokens`.
        """
        return self.forward_tokens(x, floor_to_patch=floor_to_patch)[:, self.num_prefix_tokens :]


def create_vit(
    spec: BackboneSpec,
    *,
    drop_path_rate: float,
    seed: int,
    pos_embed_interp: PosEmbedInterp | str = PosEmbedInterp.OFFICIAL,
) -> NecoVisionTransformer:
    """The timm architecture with random weights drawn from ``seed`` (global RNG untouched)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = timm.create_model(
            spec.timm_name,
            pretrained=False,
            num_classes=0,
            img_size=spec.native_img_size,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **dict(spec.timm_kwargs),
        )
    if type(vit) is not VisionTransformer:
        raise RuntimeError(f"{spec.name}: timm built {type(vit).__name__}, not a VisionTransformer")
    heads = int(getattr(vit.blocks[0].attn, "num_heads", -1))
    got = (vit.patch_embed.patch_size[0], vit.embed_dim, len(vit.blocks), heads,
           vit.num_prefix_tokens - 1)  # fmt: skip
    want = (spec.patch_size, spec.embed_dim, spec.depth, spec.num_heads, spec.num_registers)
    if got != want:
        raise RuntimeError(
            f"{spec.name}: timm built (p, D, depth, heads, regs)={got}, registry says {want}"
        )
    return NecoVisionTransformer.from_timm(vit, pos_embed_interp)


def random_load_report(name: str, *, seed: int | None) -> dict[str, Any]:
    """The load report of a randomly initialised backbone: no file was read."""
    return {
        "backbone": name,
        "weights": "random",
        "seed": seed,
        "source": "random",
        "sha256": None,
        "key_map": None,
        "note": "random initialisation: no weight file was read",
    }


def load_weights_file(
    backbone: Backbone,
    path: Path,
    *,
    key_map: str | None = None,
    release: str | None = None,
) -> dict[str, Any]:
    """Load a weight file into ``backbone`` strictly, through the right key map.

    Args:
        backbone: target.
        path: ``*.safetensors`` (timm names, :mod:`neco.models.export`) or a file in the backbone's
            official format (``spec.key_map``).
        key_map: force a format from :data:`neco.models.checkpoints.KEY_MAPS`.
        release: set to read a released NeCo weight file: the network it holds or, in a file
            with both, the one to take (``student`` or ``teacher``;
            :func:`neco.models.checkpoints.neco_release_key_map`).

    Returns:
        A load report for logging and results: ``source`` and ``file`` (the path), ``sha256`` of
        the file, ``key_map``, ``container``, ``prefix``, ``dropped``, ``backbone``; ``urls`` when
        the file is the registry's cached download.
    """
    path = Path(path)
    spec = backbone.spec
    base = KEY_MAPS[spec.key_map]
    if release is not None:
        if key_map is not None:
            raise WeightsError(f"{path}: pass either key_map or release (NeCo), not both")
        km = neco_release_key_map(arch=release_arch_of(spec.key_map), which=release)
    elif key_map is not None:
        if key_map not in KEY_MAPS:
            raise WeightsError(f"key_map: unknown {key_map!r}; expected one of {sorted(KEY_MAPS)}")
        km = KEY_MAPS[key_map]
    elif path.suffix == ".safetensors":
        km = KEY_MAPS["timm"]
        _check_export_metadata(path, spec)
    else:
        km = base

    obj = load_checkpoint(path, safe_globals=km.safe_globals)
    expected = backbone.vit.state_dict()
    sd, report = map_state_dict(obj, km, expected=expected, source=str(path))
    backbone.vit.load_state_dict(sd, strict=True)
    report.update(source=str(path), file=str(path), sha256=sha256_file(path), backbone=spec.name)
    if spec.weights.urls and path.name == spec.weights.filename:
        report["urls"] = list(spec.weights.urls)
    _log.info("loaded %s into %s with key map %s", path, spec.name, km.name)
    return report


def _check_export_metadata(path: Path, spec: BackboneSpec) -> None:

    found = read_export_metadata(path).get("backbone")
    if found is not None and found != spec.name:
        raise WeightsError(f"{path}: exported for backbone {found!r}, not {spec.name!r}")


def build_backbone(
    name: str,
    *,
    weights: str | Path | None,
    cache_dir: Path | None,
    drop_path_rate: float,
    pos_embed_interp: PosEmbedInterp | str,
    seed: int,
    progress: bool = False,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: registry key.
        weights: ``None`` (official source, cached in ``cache_dir``), ``"random"`` (seeded
            init) or a local file path (see the module docstring).
        cache_dir: download cache (``train.weights_cache``); only needed for ``None``.
        drop_path_rate: stochastic-depth rate of the last block, linear over depth (student
            0.1, teacher and evaluation 0; method.md §4).
        pos_embed_interp: ``official`` | ``hub_reg`` | ``timm`` (method.md §4, §16 #16).
        seed: seed of the random initialisation (overwritten when weights are loaded).
        progress: show a download progress bar.

    Raises:
        WeightsError: weights unavailable (offline: within seconds, naming the URL and
            ``train.weights``) or not matching the architecture.
    """
    spec = get_spec(name)
    mode = parse_pos_embed_interp(pos_embed_interp)
    path: Path | None = None
    if weights is None and spec.weights.kind is not SourceKind.RANDOM:
        # resolve (and fail, offline) before spending time on the random init
        path = resolve_weights_file(name, spec.weights, cache_dir=cache_dir, progress=progress)
    elif weights is not None and not (isinstance(weights, str) and weights == "random"):
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{OVERRIDE_PARAM}: weight file {path} not found")
    vit = create_vit(spec, drop_path_rate=drop_path_rate, seed=seed, pos_embed_interp=mode)
    backbone = Backbone(vit, spec, mode)
    if path is None:
        backbone.load_report = random_load_report(name, seed=seed)
    else:
        backbone.load_report = load_weights_file(backbone, path)
    return backbone


def load_neco_checkpoint(
    path: Path, name: str, *, which: str, pos_embed_interp: PosEmbedInterp | str
) -> Backbone:
    """A backbone from a released NeCo weight file (HF ``FunAILab/NeCo``), strictly.

    Args:
        path: the ``*_model.ckpt`` (student) / ``*_teacher.ckpt`` (teacher) file: the file is the
            choice of network. A file holding both (a Lightning ``state_dict`` with ``model.*``
            and ``teacher.*``) is accepted too; ``which`` then picks the prefix.
        name: registry key of its architecture (e.g. ``dinov2_vits14_xr``).
        which: ``student`` or ``teacher`` (``eval.checkpoint_key``).
        pos_embed_interp: resampling rule it is evaluated with.
    """
    if which not in NECO_RELEASE_PREFIXES:
        raise ValueError(
            f"eval.checkpoint_key: invalid value {which!r}; "
            f"expected one of {sorted(NECO_RELEASE_PREFIXES)}"
        )
    backbone = build_backbone(
        name,
        weights="random",
        cache_dir=None,
        drop_path_rate=0.0,
        pos_embed_interp=pos_embed_interp,
        seed=0,
    )
    path = Path(path)
    for network, suffix in (("student", "_model.ckpt"), ("teacher", "_teacher.ckpt")):
        if network != which and path.name.endswith(suffix):
            _log.warning(
                "%s is a released %s file but eval.checkpoint_key is %r: the file decides, "
                "its %s weights are loaded",
                path,
                network,
                which,
                network,
            )
    backbone.load_report = load_weights_file(backbone, path, release=which)
    return backbone


def load_neco_release(
    release: str, name: str, *, which: str, revision: str, pos_embed_interp: PosEmbedInterp | str
) -> Backbone:
    """A backbone from a named NeCo release (``eval.checkpoint: neco_release:<release>``).

    Args:
        release: release name (:data:`neco.models.release.RELEASES`).
        name: ``train.backbone``; must be the release's backbone.
        which: ``student`` (``*_model.ckpt``) or ``teacher`` (``*_teacher.ckpt``).
        revision: HF revision (``eval.release_revision``).
        pos_embed_interp: resampling rule it is evaluated with.

    Raises:
        WeightsError: unknown release, backbone mismatch (naming both), file not available
            (offline: at once, saying how to place it) or not matching the architecture.
    """
    from neco.models.release import (
        RELEASE_REPO,
        RELEASE_SCHEME,
        check_release_backbone,
        get_release,
        resolve_release_file,
    )

    if which not in NECO_RELEASE_PREFIXES:
        raise ValueError(
            f"eval.checkpoint_key: invalid value {which!r}; "
            f"expected one of {sorted(NECO_RELEASE_PREFIXES)}"
        )
    rel = get_release(release)
    check_release_backbone(rel, name)
    path = resolve_release_file(rel, which, revision=revision)
    backbone = load_neco_checkpoint(path, name, which=which, pos_embed_interp=pos_embed_interp)
    filename = rel.filename(which)
    backbone.load_report.update(
        source=f"hf://{RELEASE_REPO}/{filename}@{revision}",
        release=f"{RELEASE_SCHEME}{rel.name}",
        hf_repo=RELEASE_REPO,
        hf_filename=filename,
        hf_revision=revision,
        which=which,
    )
    return backbone


class FrozenExtractor:
    """:class:`neco.evals.extractor.FeatureExtractor` over a backbone: eval mode, no grad, fp32.

    Calling it maps normalised images ``(B, 3, S, S)`` to ``(B, (S/p)^2, D)`` float32 patch
    tokens (evaluation.md §1.1) on the device the backbone lives on (move the backbone first).
    The backbone is set to ``eval()`` and frozen, so drop-path is inactive, as the evaluation
    contract requires. It runs in fp32 unless the caller enables autocast around the call (the
    Hummingbird reference's fp16-on-CUDA quirk does; evaluation.md §7); outputs are float32.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.device = next(backbone.parameters()).device
        self.patch_size = backbone.patch_size
        self.embed_dim = backbone.embed_dim

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, (S/p)^2, D)`` float32."""
        self.backbone.eval()
        with torch.no_grad():
            out: torch.Tensor = self.backbone(images.to(self.device, torch.float32))
        return out.float()
