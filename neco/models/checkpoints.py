"""Strict key maps from official checkpoint formats into timm ``VisionTransformer`` names (D2).

Every format is described by a :class:`KeyMap` and applied by :func:`map_state_dict`:

1. pick the state dict inside the file (``containers``: the first path present wins);
2. optionally keep only the keys under ``select_prefix`` (Lightning checkpoints holding a
   student and a teacher); the other keys are ignored and logged;
3. strip the listed ``strip_prefixes`` where present (``module.``, ``backbone.``);
4. discard keys matching the explicit ``drop`` allow-list (pretraining heads,
   ``mask_token``), logged;
5. handle DINOv2 ``register_tokens`` (absent / converted to timm's ``reg_token`` layout /
   dropped for XR, logged);
6. compare with the model: any missing key, unexpected key or shape mismatch raises
   :class:`~neco.models.fetch.WeightsError` listing them. Loading is then ``strict=True``.

Official key names (DINOv2 ``dinov2/models/vision_transformer.py``, DINO
``vision_transformer.py``): ``cls_token``, ``pos_embed`` (1, 1 + M², D), ``mask_token``,
``register_tokens`` (1, R, D), ``patch_embed.proj.{weight,bias}``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*``,
``norm.{weight,bias}``; they coincide with timm's names for ViT-S/B (no chunked blocks, MLP
FFN). timm's register models use ``no_embed_class``: ``reg_token`` = ``register_tokens``,
``cls_token`` = ``cls_token + pos_embed[:, 0]`` and ``pos_embed`` = ``pos_embed[:, 1:]``
(numerically identical to DINOv2's forward).

Verified: DINOv2 hub ``.pth`` (plain state dict) and the DINO full checkpoint (``teacher``:
``backbone.*`` plus DINOHead ``head.mlp.{0,2,4}`` and weight-normed ``head.last_layer``).
**Unverified** (no file was available; the final strict comparison still guarantees that every
model weight is loaded and nothing is left over): iBOT, CrIBo, Leopart, TimeT and the released
NeCo Lightning checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from neco.models.registry import OVERRIDE_PARAM, WeightsError

_log = logging.getLogger(__name__)

_MAX_LISTED = 40


class Registers(str, enum.Enum):
    """What to do with a DINOv2 ``register_tokens`` tensor."""

    ABSENT = "absent"  # must not be present (plain models)
    CONVERT = "convert"  # true-register model: to timm reg_token / no_embed_class layout
    DROP = "drop"  # XR: register weights into a 0-register ViT; must be present, dropped


@dataclass(frozen=True)
class KeyMap:
    """One checkpoint format.

    Attributes:
        name: registry name of the format.
        containers: candidate key paths to the state dict inside the loaded object, tried
            in order; ``()`` is the root.
        select_prefix: if set, only keys starting with it are used (stripped); others are
            ignored and logged. ``None``: use every key.
        strip_prefixes: prefixes removed, in order, from keys that start with them.
        drop: regexes (full match, after stripping) of keys discarded explicitly.
        registers: DINOv2 ``register_tokens`` handling.
        safe_globals: unpickling allow-list entries the format needs.
        verified: whether the layout was checked against the real file.
        notes: assumptions about the layout.
    """

    name: str
    containers: tuple[tuple[str, ...], ...]
    select_prefix: str | None
    strip_prefixes: tuple[str, ...]
    drop: tuple[str, ...]
    registers: Registers
    safe_globals: tuple[str, ...]
    verified: bool
    notes: str


_DINOV2_DROP = (r"mask_token",)
_DINO_HEAD = (r"head\.mlp\.[024]\.(weight|bias)", r"head\.last_layer\.weight_[gv]")
_ANY_HEAD = (r"head\..+",)

_NS = ("argparse.Namespace",)

# fmt: off
KEY_MAPS: dict[str, KeyMap] = {m.name: m for m in (
    KeyMap(name="dinov2", containers=((),), select_prefix=None, strip_prefixes=(),
           drop=_DINOV2_DROP, registers=Registers.ABSENT, safe_globals=(), verified=True,
           notes="DINOv2 hub *_pretrain.pth: plain state dict; mask_token dropped"),
    KeyMap(name="dinov2_reg", containers=((),), select_prefix=None, strip_prefixes=(),
           drop=_DINOV2_DROP, registers=Registers.CONVERT, safe_globals=(), verified=True,
           notes="DINOv2 hub *_reg4_pretrain.pth; register_tokens -> timm reg_token"),
    KeyMap(name="dinov2_xr", containers=((),), select_prefix=None, strip_prefixes=(),
           drop=_DINOV2_DROP, registers=Registers.DROP, safe_globals=(), verified=True,
           notes="DINOv2 *_reg4_pretrain.pth into a 0-register ViT: register_tokens dropped "
                 "(method.md D5, §13)"),
    KeyMap(name="dino", containers=(("teacher",), ()), select_prefix=None,
           strip_prefixes=("backbone.",), drop=_DINO_HEAD, registers=Registers.ABSENT,
           safe_globals=_NS, verified=True,
           notes="DINO *_full_checkpoint.pth: 'teacher' = MultiCropWrapper(backbone, DINOHead); "
                 "a backbone-only *_pretrain.pth (root, no prefix) is accepted too"),
    KeyMap(name="ibot", containers=(("state_dict",), ("teacher",), ()), select_prefix=None,
           strip_prefixes=("module.", "backbone."), drop=_ANY_HEAD + (r"masked_embed",),
           registers=Registers.ABSENT, safe_globals=_NS, verified=False,
           notes="iBOT checkpoint_teacher.pth assumed {'state_dict': backbone}, or a full "
                 "checkpoint ('teacher': backbone.* + head.*); masked_embed dropped"),
    KeyMap(name="cribo", containers=(("teacher",), ("state_dict",), ()), select_prefix=None,
           strip_prefixes=("module.", "backbone."), drop=_ANY_HEAD,
           registers=Registers.ABSENT, safe_globals=_NS, verified=False,
           notes="CrIBo assumed DINO-like: 'teacher' with backbone.* + head.*"),
    KeyMap(name="leopart", containers=(("state_dict",), ()), select_prefix=None,
           strip_prefixes=("module.", "model."), drop=(), registers=Registers.ABSENT,
           safe_globals=(), verified=False,
           notes="Leopart assumed a flat ViT state dict, optionally under 'state_dict' and "
                 "prefixed 'model.' (its loader strips the first key component)"),
    KeyMap(name="timetuning", containers=(("state_dict",), ()), select_prefix=None,
           strip_prefixes=("module.", "model."), drop=(), registers=Registers.ABSENT,
           safe_globals=(), verified=False,
           notes="TimeT assumed like Leopart: flat ViT state dict, optional 'model.' prefix"),
    KeyMap(name="timm", containers=((),), select_prefix=None, strip_prefixes=(), drop=(),
           registers=Registers.ABSENT, safe_globals=(), verified=True,
           notes="timm VisionTransformer names, e.g. files written by neco.models.export"),
)}
# fmt: on


def neco_release_key_map(*, base: KeyMap, prefix: str) -> KeyMap:
    """Key map of a released NeCo Lightning ``.ckpt`` (HF ``FunAILab/NeCo``; unverified).

    Args:
        base: the DINOv2/DINO map of the architecture (its register handling is kept, except
            that XR checkpoints hold a 0-register ViT, so ``drop`` becomes ``absent``).
        prefix: the module inside ``state_dict``: ``"model."`` (student, the default of
            evaluation.md §6) or ``"teacher."``.
    """
    registers = Registers.ABSENT if base.registers is Registers.DROP else base.registers
    return replace(
        base,
        name=f"neco_release[{prefix}]",
        containers=(("state_dict",),),
        select_prefix=prefix,
        strip_prefixes=(),
        drop=_DINOV2_DROP,
        registers=registers,
        safe_globals=(),
        verified=False,
        notes=f"Lightning checkpoint; backbone keys assumed directly under '{prefix}' in "
        f"official ViT names (unverified)",
    )


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


_VIT_ANCHOR = re.compile(
    r"(?:^|\.)(cls_token|pos_embed|reg_token|register_tokens|mask_token|patch_embed\.|"
    r"blocks\.\d|norm\.(?:weight|bias)$)"
)


def _top_prefixes(keys: list[str]) -> list[str]:
    """Module prefixes in front of ViT parameter names (else the first key component)."""
    out = set()
    for k in keys:
        m = _VIT_ANCHOR.search(k)
        if m is not None:
            out.add(k[: m.start(1)])
        else:
            out.add(k.split(".", 1)[0] + ("." if "." in k else ""))
    return sorted(out)


def _pick_container(obj: Any, key_map: KeyMap, source: str) -> tuple[Mapping[str, Any], str]:
    for path in key_map.containers:
        node = obj
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if isinstance(node, Mapping):
                return node, "/".join(path) or "<root>"
    top = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    wanted = [("/".join(p) or "<root>") for p in key_map.containers]
    raise WeightsError(
        f"{source}: format {key_map.name!r} expects the state dict under one of {wanted}; "
        f"found top-level keys {top}"
    )


def map_state_dict(
    obj: Any, key_map: KeyMap, *, expected: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a loaded checkpoint onto a model's state dict, strictly.

    Args:
        obj: what :func:`neco.models.fetch.load_checkpoint` returned.
        key_map: the checkpoint's format.
        expected: the target model's ``state_dict()`` (names and shapes to produce).
        source: file name for messages.

    Returns:
        ``(state_dict, report)``: tensors with exactly the keys and shapes of ``expected``;
        report with ``container``, ``dropped``, ``ignored_outside_prefix`` and ``key_map``.

    Raises:
        WeightsError: listing missing keys, unexpected keys and shape mismatches.
    """
    container, where = _pick_container(obj, key_map, source)
    keys = list(container)
    non_tensors = [k for k in keys if not isinstance(container[k], torch.Tensor)]
    if non_tensors:
        raise WeightsError(
            f"{source}: '{where}' is not a state dict: non-tensor entries {_listing(non_tensors)}"
        )
    ignored: list[str] = []
    if key_map.select_prefix is not None:
        pre = key_map.select_prefix
        ignored = [k for k in keys if not k.startswith(pre)]
        keys = [k for k in keys if k.startswith(pre)]
        if not keys:
            raise WeightsError(
                f"{source}: no key starts with the prefix {pre!r} (format {key_map.name!r}); the "
                f"checkpoint's key prefixes are {_top_prefixes(ignored)} (ViT names follow the "
                f"backbone prefixes). Pass the right prefix."
            )
        if ignored:
            _log.info(
                "%s: ignoring %d keys outside %r (prefixes %s)",
                source,
                len(ignored),
                pre,
                _top_prefixes(ignored),
            )
    renamed: dict[str, torch.Tensor] = {}
    for key in keys:
        new = key[len(key_map.select_prefix) :] if key_map.select_prefix else key
        for pre in key_map.strip_prefixes:
            if new.startswith(pre):
                new = new[len(pre) :]
        if new in renamed:
            raise WeightsError(f"{source}: two keys map to {new!r} after stripping prefixes")
        renamed[new] = container[key]
    dropped = sorted(k for k in renamed if any(re.fullmatch(p, k) for p in key_map.drop))
    for k in dropped:
        del renamed[k]
    has_reg = "register_tokens" in renamed
    if key_map.registers is Registers.DROP:
        if not has_reg:
            raise WeightsError(
                f"{source}: format {key_map.name!r} (XR) expects a DINOv2 register checkpoint, but "
                f"it has no 'register_tokens'"
            )
        del renamed["register_tokens"]
        dropped.append("register_tokens")
        _log.info("%s: XR: dropped register_tokens; the model has 0 register tokens", source)
    elif key_map.registers is Registers.CONVERT and has_reg:
        _to_timm_register_layout(renamed)
    if dropped:
        _log.info(
            "%s: dropped %d keys by the %r allow-list: %s",
            source,
            len(dropped),
            key_map.name,
            _listing(dropped),
        )
    _check_against(renamed, expected, key_map, source)
    report = {
        "key_map": key_map.name,
        "container": where,
        "dropped": dropped,
        "ignored_outside_prefix": len(ignored),
        "verified_layout": key_map.verified,
    }
    return renamed, report


def _to_timm_register_layout(sd: dict[str, torch.Tensor]) -> None:
    """DINOv2 register layout -> timm ``no_embed_class`` layout, in place."""
    if "cls_token" not in sd or "pos_embed" not in sd:
        return  # reported as missing keys by the strict check
    pos = sd.pop("pos_embed")
    sd["reg_token"] = sd.pop("register_tokens")
    sd["cls_token"] = sd["cls_token"] + pos[:, :1]
    sd["pos_embed"] = pos[:, 1:]


def _check_against(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    source: str,
) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = [
        f"{source}: does not match the model under key map {key_map.name!r}"
        + ("" if key_map.verified else " (layout unverified: " + key_map.notes + ")")
    ]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if "register_tokens" in unexpected:
            parts.append(
                "hint: a register checkpoint; use a *_reg (true registers) or *_xr backbone"
            )
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes[:_MAX_LISTED]))
    raise WeightsError("\n  ".join(parts))


#: Globals allowed while unpickling with ``weights_only=True``. DINO/iBOT full checkpoints
#: store their argparse ``args``; nothing else is trusted.
_SAFE_GLOBALS: dict[str, Any] = {"argparse.Namespace": argparse.Namespace}


@contextlib.contextmanager
def _allowed_globals(names: Sequence[str]) -> Iterator[None]:
    import torch

    objs = [_SAFE_GLOBALS[n] for n in names]
    if not objs:
        yield
        return
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is not None:  # torch >= 2.5
        with ctx(objs):
            yield
    else:  # torch 2.4: process-wide allow-list (only argparse.Namespace is ever added)
        torch.serialization.add_safe_globals(objs)
        yield


def load_checkpoint(path: Path, *, safe_globals: Sequence[str]) -> Any:
    """Read a weight file without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., map_location="cpu", weights_only=True)``.

    Args:
        path: the file.
        safe_globals: names from the allow-list (``argparse.Namespace``) the format needs.

    Raises:
        WeightsError: missing file, or a pickle needing a global outside the allow-list.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found (from {OVERRIDE_PARAM} or the cache)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with _allowed_globals(safe_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        detail = " ".join(str(err).split())
        raise WeightsError(
            f"{path}: cannot read the checkpoint with torch.load(weights_only=True): {first} "
            f"[{detail[:600]}]. Arbitrary pickled objects are refused; extract the state dict "
            f"with a trusted script and save it with torch.save(state_dict)."
        ) from err


EXPORT_FORMAT = "neco-backbone-v1"


METADATA_KEY = "neco"  # safetensors metadata key holding the JSON metadata


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported file (empty for a foreign safetensors file)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = dict(fh.metadata() or {})
    if METADATA_KEY in raw:
        return {str(k): str(v) for k, v in json.loads(raw[METADATA_KEY]).items()}
    return raw
