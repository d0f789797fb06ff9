"""Export a trained backbone as a timm-loadable safetensors state dict, and load it back strictly.

The file holds ``Backbone.vit.state_dict()`` under timm's key names, plus metadata: the
registry name, the ``timm.create_model`` arguments that rebuild the architecture
(``timm_create_kwargs``, JSON) and, when known, the position-embedding rule it was trained
with. Any timm user can do::

    model = timm.create_model(**json.loads(meta["timm_create_kwargs"]))
    model.load_state_dict(safetensors.torch.load_file(path), strict=True)

CLI (from a Lightning ``.ckpt`` of our trainer or a ``.pt`` state dict)::

    python -m neco.models.export --ckpt models/ckpt/last.ckpt --backbone dinov2_vits14_xr \\
        --out student.safetensors [--prefix student.backbone.] [--format ours|neco_release]

``--prefix`` is the module path of the student :class:`~neco.models.vit.Backbone` inside the
checkpoint's ``state_dict`` (our trainer: ``student.backbone.``; a bare
``Backbone.state_dict()`` file: empty). ``--format neco_release`` reads a released NeCo weight
file instead (``--prefix model.`` student or ``teacher.``; see
:func:`neco.models.checkpoints.neco_release_key_map` for the accepted layouts).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from neco.io import atomic_path, is_rank_zero
from neco.models.checkpoints import (
    EXPORT_FORMAT,
    KEY_MAPS,
    METADATA_KEY,
    load_checkpoint,
    map_state_dict,
    read_export_metadata,
)
from neco.models.pos_embed import PosEmbedInterp, parse_pos_embed_interp
from neco.models.registry import NECO_RELEASE_PREFIXES, WeightsError
from neco.models.vit import Backbone, build_backbone, load_weights_file

_log = logging.getLogger(__name__)


def timm_create_kwargs(backbone: Backbone) -> dict[str, object]:
    """``timm.create_model`` keyword arguments rebuilding the exported architecture."""
    spec = backbone.spec
    return {
        "model_name": spec.timm_name,
        "pretrained": False,
        "num_classes": 0,
        "img_size": spec.native_img_size,
        "dynamic_img_size": True,
        **dict(spec.timm_kwargs),
    }


def export_backbone(
    backbone: Backbone, path: str | Path, *, record_pos_embed_interp: bool = True
) -> None:
    """Write ``backbone`` as safetensors with timm key names, atomically, on rank 0 only.

    Args:
        backbone: the (student) backbone.
        path: destination ``*.safetensors``.
        record_pos_embed_interp: store the backbone's resampling rule in the metadata (it is
            what the weights were trained with when exported from a training run).
    """
    if not is_rank_zero():
        return
    from safetensors.torch import save_file

    tensors = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.vit.state_dict().items()
    }
    meta = {
        "format": EXPORT_FORMAT,
        "backbone": backbone.spec.name,
        "timm_create_kwargs": json.dumps(timm_create_kwargs(backbone), sort_keys=True),
    }
    if record_pos_embed_interp:
        meta["pos_embed_interp"] = backbone.pos_embed_interp.value
    with atomic_path(path, suffix=".safetensors") as tmp:
        # One metadata entry holding sorted JSON: safetensors writes the metadata map in a
        # random order, which would make identical weights hash differently (DVC reruns).
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def load_exported(
    path: str | Path, name: str, *, pos_embed_interp: PosEmbedInterp | str
) -> Backbone:
    """Rebuild backbone ``name`` from an exported file, strictly (drop-path 0, for evaluation).

    Raises:
        WeightsError: the file was exported for another backbone, or keys/shapes differ.
    """
    mode = parse_pos_embed_interp(pos_embed_interp)
    path = Path(path)
    meta = read_export_metadata(path) if path.is_file() else {}
    trained = meta.get("pos_embed_interp")
    if trained is not None and trained != mode.value:
        _log.warning(
            "%s was trained with pos_embed_interp=%s but is loaded with %s",
            path,
            trained,
            mode.value,
        )
    return build_backbone(
        name, weights=path, cache_dir=None, drop_path_rate=0.0, pos_embed_interp=mode, seed=0
    )


def export_from_checkpoint(
    ckpt: Path,
    name: str,
    out: Path,
    *,
    prefix: str,
    fmt: str,
    pos_embed_interp: PosEmbedInterp | None,
) -> dict[str, object]:
    """Extract a backbone from a training checkpoint and export it.

    Args:
        ckpt: Lightning ``.ckpt`` (state under ``state_dict``) or a ``.pt`` state dict.
        name: registry key of the architecture.
        out: destination ``*.safetensors``.
        prefix: module path of the backbone in the checkpoint (see the module docstring).
        fmt: ``ours`` (our :class:`Backbone` keys, ``<prefix>vit.<timm name>``) or
            ``neco_release`` (a released NeCo weight file; ``prefix`` ``model.`` = student or
            ``teacher.``: the network taken from a file holding both; a one-network file may be
            unprefixed).
        pos_embed_interp: rule to record in the metadata (``None``: not recorded).

    Returns:
        The load report (keys dropped, file sha256, ...).
    """
    backbone = build_backbone(
        name,
        weights="random",
        cache_dir=None,
        drop_path_rate=0.0,
        pos_embed_interp=pos_embed_interp or PosEmbedInterp.OFFICIAL,
        seed=0,
    )
    if fmt == "neco_release":
        which = {p: w for w, p in NECO_RELEASE_PREFIXES.items()}.get(prefix)
        if which is None:
            raise WeightsError(
                f"--prefix: a NeCo release file takes 'model.' (student) or 'teacher.', "
                f"not {prefix!r}"
            )
        report = load_weights_file(backbone, ckpt, release=which)
    elif fmt == "ours":
        km = replace(
            KEY_MAPS["timm"],
            name=f"ours[{prefix}vit.]",
            containers=(("state_dict",), ()),
            select_prefixes=(f"{prefix}vit.",),
            outside=None,  # our checkpoint also holds the teacher, heads, queue: ignored
        )
        obj = load_checkpoint(ckpt, safe_globals=())
        sd, report = map_state_dict(obj, km, expected=backbone.vit.state_dict(), source=str(ckpt))
        backbone.vit.load_state_dict(sd, strict=True)
    else:
        raise WeightsError(f"--format: invalid value {fmt!r}; expected 'ours' or 'neco_release'")
    export_backbone(backbone, out, record_pos_embed_interp=pos_embed_interp is not None)
    return dict(report)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``python -m neco.models.export --ckpt ... --backbone ... --out ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="Lightning .ckpt or .pt file")
    parser.add_argument("--backbone", required=True, help="registry name of the architecture")
    parser.add_argument("--out", type=Path, required=True, help="destination .safetensors")
    parser.add_argument(
        "--prefix",
        default=None,
        help="backbone module path in the checkpoint (ours: 'student.backbone.'; "
        "neco_release: 'model.' student or 'teacher.')",
    )
    parser.add_argument("--format", dest="fmt", choices=("ours", "neco_release"), default="ours")
    parser.add_argument(
        "--pos-embed-interp",
        choices=[m.value for m in PosEmbedInterp],
        default=None,
        help="record the rule the weights were trained with",
    )
    args = parser.parse_args(argv)
    prefix = args.prefix
    if prefix is None:
        prefix = "student.backbone." if args.fmt == "ours" else "model."
    interp = PosEmbedInterp(args.pos_embed_interp) if args.pos_embed_interp else None
    report = export_from_checkpoint(
        args.ckpt, args.backbone, args.out, prefix=prefix, fmt=args.fmt, pos_embed_interp=interp
    )
    print(json.dumps({"out": str(args.out), **report}, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
