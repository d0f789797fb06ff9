"""Strict key maps from official checkpoint formats into timm ``VisionTransformer`` names (D2).

Every format is described by a :class:`KeyMap` and applied by :func:`map_state_dict`:

1. pick the state dict inside the file (``containers``: the first path present wins);
2. optionally select the backbone's keys by a module prefix (``select_prefixes``: candidates in
   order, e.g. ``model.`` then unprefixed; the first under which ``cls_token`` is found wins);
   every key *outside* the chosen prefix must match the explicit ``outside`` allow-list
   (teacher copies, prototypes, heads) and is dropped, else it is reported as unexpected
   (``outside=None``: everything outside is ignored, for our own training checkpoints only);
3. strip the listed ``strip_prefixes`` where present (``module.``, ``backbone.``);
4. discard keys matching the explicit ``drop`` allow-list (pretraining heads,
   ``projection_head``, ``mask_token``), logged;
5. handle DINOv2 ``register_tokens`` (absent / converted to timm's ``reg_token`` layout /
   dropped for XR, logged);
6. compare with the model: any missing key, unexpected key (inside or outside the prefix) or
   shape mismatch raises :class:`~neco.models.registry.WeightsError` naming them. Loading is
   then ``strict=True``.

Official key names (DINOv2 ``dinov2/models/vision_transformer.py``, DINO
``vision_transformer.py``): ``cls_token``, ``pos_embed`` (1, 1 + M², D), ``mask_token``,
``register_tokens`` (1, R, D), ``patch_embed.proj.{weight,bias}``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*``,
``norm.{weight,bias}``; they coincide with timm's names for ViT-S/B (no chunked blocks, MLP
FFN). timm's register models use ``no_embed_class``: ``reg_token`` = ``register_tokens``,
``cls_token`` = ``cls_token + pos_embed[:, 0]`` and ``pos_embed`` = ``pos_embed[:, 1:]``
(numerically identical to DINOv2's forward).

Evidence per layout (``/work/shared/notes/checkpoints.md``, rows M1-M5):

* **checked against the published files' layout**: DINOv2 hub ``*_pretrain.pth`` (plain state
  dict, ``mask_token``; ``register_tokens`` in ``*_reg4``) and the DINO full checkpoint
  (``teacher``: ``backbone.*`` + DINOHead ``head.mlp.{0,2,4}``, ``head.last_layer.weight_{g,v}``).
* **checked against the publishers' code/README only** (no real file was opened): iBOT
  ``checkpoint_teacher.pth`` (``state_dict`` container, ``masked_embed``), CrIBo (``teacher``
  container, ``backbone.*`` + ``head.*``), Leopart (README: "the ViT backbone as well as the
  projection head", loader strips the first key component; the model owns ``projection_head.*``
  and ``prototypes.weight``), TimeT (README strips the first *two* components; the module owns
  ``feature_extractor.{backbone,head}``, ``prototypes`` and after momentum init
  ``teacher.{backbone,head}`` and ``teacher_prototypes``), released NeCo files (README loads them
  straight into the hub/timm ViT: a plain ViT dict plus the NeCo ``projection_head``).
* **assumed**: the exact module prefix in the Leopart file (``model.`` or none, both accepted),
  the *name* ``feature_extractor.backbone.`` in TimeT (inferred from the code; the two-component
  depth is explicit), and whether released NeCo files carry a ``model.``/``teacher.`` prefix or a
  ``state_dict`` container (all accepted, as the official NeCo evaluation code does). The final
  strict comparison still guarantees that every model weight is loaded and nothing is left over.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neco.models.registry import NECO_RELEASE_PREFIXES, OVERRIDE_PARAM, WeightsError

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
        select_prefixes: candidate module prefixes of the backbone, tried in order (``""`` =
            unprefixed); the chosen one is stripped. ``()``: every key belongs to the backbone.
        outside: regexes (full match on the raw key) of the keys allowed *outside* the chosen
            prefix; they are dropped and logged, any other key outside is unexpected. ``None``:
            every key outside is ignored (logged); only for our own training checkpoints.
        strip_prefixes: prefixes removed, in order, from keys that start with them.
        drop: regexes (full match, after stripping) of keys discarded explicitly.
        registers: DINOv2 ``register_tokens`` handling.
        safe_globals: unpickling allow-list entries the format needs.
        verified: whether the layout was checked against the real file or the publisher's
            code (see the module docstring for which evidence each format has).
        notes: the layout and its provenance / assumptions.
    """

    name: str
    containers: tuple[tuple[str, ...], ...]
    select_prefixes: tuple[str, ...]
    outside: tuple[str, ...] | None
    strip_prefixes: tuple[str, ...]
    drop: tuple[str, ...]
    registers: Registers
    safe_globals: tuple[str, ...]
    verified: bool
    notes: str


_DINOV2_DROP = (r"mask_token",)
_DINO_HEAD = (r"head\.mlp\.[024]\.(weight|bias)", r"head\.last_layer\.weight_[gv]")
_ANY_HEAD = (r"head\..+",)
#: NeCo's projection head (``src/models/vit{,_v2}.py``: Linear-GELU-Linear-GELU-Linear).
_NECO_HEAD = (r"projection_head\..+",)
#: Leopart ``src/vit.py``: projection head and ``prototypes = nn.Linear(..., bias=False)``.
_LEOPART_EXTRA = (r"projection_head\..+", r"prototypes\.weight")
#: TimeT (checkpoints.md M1): everything the module owns besides its ViT.
_TIMET_OUTSIDE = (
    r"feature_extractor\.head\..+",
    r"prototypes",
    r"teacher\.backbone\..+",
    r"teacher\.head\..+",
    r"teacher_prototypes",
)

_NS = ("argparse.Namespace",)

# fmt: off
KEY_MAPS: dict[str, KeyMap] = {m.name: m for m in (
    KeyMap(name="dinov2", containers=((),), select_prefixes=(), outside=(), strip_prefixes=(),
           drop=_DINOV2_DROP, registers=Registers.ABSENT, safe_globals=(), verified=True,
           notes="DINOv2 hub *_pretrain.pth: plain state dict; mask_token dropped"),
    KeyMap(name="dinov2_reg", containers=((),), select_prefixes=(), outside=(),
           strip_prefixes=(), drop=_DINOV2_DROP, registers=Registers.CONVERT, safe_globals=(),
           verified=True,
           notes="DINOv2 hub *_reg4_pretrain.pth; register_tokens -> timm reg_token"),
    KeyMap(name="dinov2_xr", containers=((),), select_prefixes=(), outside=(),
           strip_prefixes=(), drop=_DINOV2_DROP, registers=Registers.DROP, safe_globals=(),
           verified=True,
           notes="DINOv2 *_reg4_pretrain.pth into a 0-register ViT: register_tokens dropped "
                 "(method.md D5, §13)"),
    KeyMap(name="dino", containers=(("teacher",), ()), select_prefixes=(), outside=(),
           strip_prefixes=("backbone.",), drop=_DINO_HEAD, registers=Registers.ABSENT,
           safe_globals=_NS, verified=True,
           notes="DINO *_full_checkpoint.pth: 'teacher' = MultiCropWrapper(backbone, DINOHead); "
                 "a backbone-only *_pretrain.pth (root, no prefix) is accepted too"),
    KeyMap(name="ibot", containers=(("state_dict",), ("teacher",), ()), select_prefixes=(),
           outside=(), strip_prefixes=("module.", "backbone."),
           drop=_ANY_HEAD + (r"masked_embed",), registers=Registers.ABSENT, safe_globals=_NS,
           verified=True,
           notes="iBOT checkpoint_teacher.pth: {'state_dict': backbone incl. masked_embed} (per "
                 "bytedance/ibot and NeCo experiments/utils.py; no real file opened), or a full "
                 "checkpoint ('teacher': backbone.* + head.*); masked_embed and head.* dropped"),
    KeyMap(name="cribo", containers=(("teacher",), ("state_dict",), ()), select_prefixes=(),
           outside=(), strip_prefixes=("module.", "backbone."), drop=_ANY_HEAD,
           registers=Registers.ABSENT, safe_globals=_NS, verified=True,
           notes="CrIBo checkpoint: DINO-like 'teacher' with backbone.* + head.* (per "
                 "tileb1/CrIBo and NeCo experiments/utils.py; no real file opened)"),
    KeyMap(name="leopart", containers=(("state_dict",), ()), select_prefixes=("model.", ""),
           outside=(r"teacher\..+",), strip_prefixes=(), drop=_LEOPART_EXTRA,
           registers=Registers.ABSENT, safe_globals=(), verified=False,
           notes="Leopart full ckpt (README: ViT + projection head; its loader strips the first "
                 "key component): ViT keys under 'model.' (assumed name; an unprefixed file is "
                 "accepted too) plus projection_head.* and prototypes.weight (dropped), an "
                 "optional teacher.* copy (dropped)"),
    KeyMap(name="timetuning", containers=(("state_dict",), ()),
           select_prefixes=("feature_extractor.backbone.",), outside=_TIMET_OUTSIDE,
           strip_prefixes=(), drop=(), registers=Registers.ABSENT, safe_globals=(),
           verified=False,
           notes="TimeT.pth: flat TimeT module state dict (README strips two key components); "
                 "ViT under 'feature_extractor.backbone.' (name inferred from the code); "
                 "feature_extractor.head.*, prototypes, teacher.backbone.*, teacher.head.*, "
                 "teacher_prototypes dropped"),
    KeyMap(name="timm", containers=((),), select_prefixes=(), outside=(), strip_prefixes=(),
           drop=(), registers=Registers.ABSENT, safe_globals=(), verified=True,
           notes="timm VisionTransformer names, e.g. files written by neco.models.export"),
)}
# fmt: on

#: The network of a NeCo checkpoint -> its module prefix in the Lightning module (``src/neco.py``).

#: Release architectures: DINOv2 names without / with registers, or DINO/timm names.
RELEASE_ARCHS = ("dinov2", "dinov2_reg", "dino")


def release_arch_of(key_map: str) -> str:
    """The released-file architecture whose names load into a backbone of format ``key_map``.

    ``dinov2`` and ``dinov2_xr`` backbones (0 registers in the model) take DINOv2 names without
    registers, ``dinov2_reg`` DINOv2 names with ``register_tokens``; every DINO-architecture
    backbone (``dino``, ``timetuning``, ``leopart``, ``ibot``, ``cribo``, ``timm``) DINO/timm names.
    """
    if key_map in ("dinov2", "dinov2_xr"):
        return "dinov2"
    if key_map == "dinov2_reg":
        return "dinov2_reg"
    return "dino"


def neco_release_key_map(*, arch: str, which: str) -> KeyMap:
    """Key map of a released NeCo weight file (HF ``FunAILab/NeCo``; prefix layout unverified).

    The NeCo README loads ``*_model.ckpt`` (student) / ``*_teacher.ckpt`` (teacher) with a plain
    ``model.load_state_dict(torch.load(path))`` into the hub DINOv2 / timm ViT, so each file is
    one network's ViT state dict in official names plus NeCo's ``projection_head.*`` (dropped;
    DINOv2 files also hold ``mask_token``, dropped). Accepted like the official NeCo evaluation
    code: the root dict or a ``state_dict`` container, keys unprefixed or under ``model.`` /
    ``teacher.``. In a file holding both networks (a Lightning checkpoint) ``which`` picks the
    prefix and the other network's keys are dropped; anything else is unexpected.

    Args:
        arch: ``dinov2`` (0 registers, also the XR files), ``dinov2_reg`` or ``dino``
            (DINO/timm names: the DINO, TimeT and Leopart releases).
        which: ``student`` or ``teacher``: the network preferred when both are present.
    """
    if arch not in RELEASE_ARCHS:
        raise WeightsError(f"release architecture {arch!r}: expected one of {RELEASE_ARCHS}")
    if which not in NECO_RELEASE_PREFIXES:
        raise WeightsError(
            f"eval.checkpoint_key: invalid value {which!r}; "
            f"expected one of {sorted(NECO_RELEASE_PREFIXES)}"
        )
    own = NECO_RELEASE_PREFIXES[which]
    other = next(p for p in NECO_RELEASE_PREFIXES.values() if p != own)
    v2 = arch.startswith("dinov2")
    return KeyMap(
        name=f"neco_release[{arch},{which}]",
        containers=(("state_dict",), ()),
        select_prefixes=(own, other, ""),
        outside=(re.escape(other) + ".+",),
        strip_prefixes=(),
        drop=(_DINOV2_DROP if v2 else ()) + _NECO_HEAD,
        registers=Registers.CONVERT if arch == "dinov2_reg" else Registers.ABSENT,
        safe_globals=(),
        verified=False,
        notes=f"released NeCo {which} file: plain {'DINOv2' if v2 else 'DINO/timm'} ViT state "
        f"dict (+ projection_head), optionally under 'state_dict' and/or '{own}'/'{other}' "
        f"(prefix layout unverified: only the README's loading code was seen)",
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


def _choose_prefix(keys: Sequence[str], candidates: tuple[str, ...]) -> str | None:
    """The backbone prefix: the first candidate holding ``cls_token``, else the first non-empty
    candidate that any key starts with, else ``""`` when allowed; ``None`` if nothing fits."""
    present = set(keys)
    for cand in candidates:
        if cand + "cls_token" in present:
            return cand
    for cand in candidates:
        if cand and any(k.startswith(cand) for k in keys):
            return cand
    return "" if "" in candidates else None


def map_state_dict(
    obj: Any, key_map: KeyMap, *, expected: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a loaded checkpoint onto a model's state dict, strictly.

    Args:
        obj: what :func:`load_checkpoint` returned.
        key_map: the checkpoint's format.
        expected: the target model's ``state_dict()`` (names and shapes to produce).
        source: file name for messages.

    Returns:
        ``(state_dict, report)``: tensors with exactly the keys and shapes of ``expected``;
        report with ``key_map``, ``container``, ``prefix`` (the backbone prefix chosen),
        ``dropped`` (keys dropped inside it), ``ignored_outside_prefix`` (number of keys outside
        it), ``outside_prefixes`` (their module prefixes) and ``verified_layout``.

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
    prefix = ""
    outside: list[str] = []
    outside_unexpected: list[str] = []
    if key_map.select_prefixes:
        chosen = _choose_prefix(keys, key_map.select_prefixes)
        if chosen is None:
            wanted = " or ".join(repr(p) for p in key_map.select_prefixes)
            raise WeightsError(
                f"{source}: no key starts with the prefix {wanted} (format {key_map.name!r}); the "
                f"checkpoint's key prefixes are {_top_prefixes(keys)} (ViT names follow the "
                f"backbone prefixes). Pass the right prefix."
            )
        prefix = chosen
        outside = [k for k in keys if not k.startswith(prefix)]
        keys = [k for k in keys if k.startswith(prefix)]
        if key_map.outside is not None:
            allowed = key_map.outside
            outside_unexpected = [
                k for k in outside if not any(re.fullmatch(p, k) for p in allowed)
            ]
        if outside:
            _log.info(
                "%s: dropping %d keys outside the backbone prefix %r (prefixes %s)",
                source,
                len(outside) - len(outside_unexpected),
                prefix,
                _top_prefixes(outside),
            )
    renamed: dict[str, torch.Tensor] = {}
    for key in keys:
        new = key[len(prefix) :]
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
    _check_against(renamed, expected, key_map, source, prefix, outside_unexpected)
    report = {
        "key_map": key_map.name,
        "container": where,
        "prefix": prefix,
        "dropped": dropped,
        "ignored_outside_prefix": len(outside),
        "outside_prefixes": _top_prefixes(outside),
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
    prefix: str = "",
    outside_unexpected: Sequence[str] = (),
) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes or outside_unexpected):
        return
    parts = [
        f"{source}: does not match the model under key map {key_map.name!r}"
        + ("" if key_map.verified else " (layout unverified: " + key_map.notes + ")")
    ]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if outside_unexpected:
        parts.append(
            f"unexpected keys outside the backbone prefix {prefix!r} "
            f"({len(outside_unexpected)}): {_listing(list(outside_unexpected))}"
        )
    if unexpected:
        where = f" (under the prefix {prefix!r})" if prefix else ""
        parts.append(f"unexpected keys{where} ({len(unexpected)}): {_listing(unexpected)}")
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


def _not_safetensors(path: Path, err: Exception) -> WeightsError:
    kind = "a torch zip/pickle" if _looks_like_torch(path) else "not a safetensors file"
    return WeightsError(
        f"{path}: cannot read it as safetensors ({err}); the file is {kind}. A torch "
        f"checkpoint (.pth/.pt/.ckpt) must keep its own suffix, so that it is read with "
        f"torch.load(weights_only=True)."
    )


def _looks_like_torch(path: Path) -> bool:
    """Whether ``path`` starts like a torch.save file (a zip archive, or a legacy pickle)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")


def load_checkpoint(path: Path, *, safe_globals: Sequence[str]) -> Any:
    """Read a weight file without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., map_location="cpu", weights_only=True)``.

    Args:
        path: the file.
        safe_globals: names from the allow-list (``argparse.Namespace``) the format needs.

    Raises:
        WeightsError: missing file, a file that is not what its suffix says, or a pickle needing
            a global outside the allow-list.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found (from {OVERRIDE_PARAM} or the cache)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise _not_safetensors(path, err) from err
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
    """The metadata of an exported file (empty for a foreign safetensors file).

    Raises:
        WeightsError: the file is not a safetensors file (e.g. a renamed torch checkpoint).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = dict(fh.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise _not_safetensors(Path(path), err) from err
    if METADATA_KEY in raw:
        return {str(k): str(v) for k, v in json.loads(raw[METADATA_KEY]).items()}
    return raw
