"""Every published checkpoint layout loads strictly, and one key too many or too few fails.

The files come from ``tests/official_formats.py`` (random values, the originals' key names and
containers, including their non-backbone groups; checkpoints.md M1-M5). Each is loaded through
the public entry points (``build_backbone(weights=path)`` for registry formats,
``load_neco_checkpoint`` for released NeCo files) and the model's tensors are compared with the
source tensors after the documented conversion (``official_formats.to_timm``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from official_formats import (
    cribo_file,
    dino_full_checkpoint,
    dino_head,
    dinov2_hub_file,
    ibot_file,
    leopart_file,
    neco_lightning_checkpoint,
    neco_release_file,
    projection_head,
    timetuning_file,
    to_timm,
)

from neco.io import sha256_file
from neco.models.checkpoints import KEY_MAPS
from neco.models.export import export_from_checkpoint, load_exported
from neco.models.registry import BACKBONES, WeightsError
from neco.models.vit import Backbone, build_backbone, load_neco_checkpoint

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _reuse_random_init():
    """Build each architecture's random init once and hand out copies: every test overwrites all
    of its weights through the strict load (and checks every key), so this only saves time."""
    import copy

    from neco.models import vit as V

    real = V.create_vit
    built: dict[tuple[Any, ...], Any] = {}

    def cached(spec, *, drop_path_rate, seed, pos_embed_interp=V.PosEmbedInterp.OFFICIAL):
        key = (spec, drop_path_rate, seed, str(pos_embed_interp))
        if key not in built:
            built[key] = real(spec, drop_path_rate=drop_path_rate, seed=seed,
                              pos_embed_interp=pos_embed_interp)  # fmt: skip
        return copy.deepcopy(built[key])

    mp = pytest.MonkeyPatch()
    mp.setattr(V, "create_vit", cached)
    yield
    mp.undo()


HEAD = tuple(f"head.{k}" for k in dino_head(dim=384, seed=0))
PROJ = tuple(projection_head(dim=384, seed=0))


@dataclass(frozen=True)
class Case:
    """One file layout.

    Attributes:
        id: test id.
        backbone: registry backbone it loads into.
        build: ``() -> (file object, official-name ViT)``.
        registers: conversion of the ViT into the model (``official_formats.to_timm``).
        sd_path: container path of the state dict inside the file.
        prefix: module prefix of the backbone keys inside that state dict.
        release: ``None`` (registry format: ``build_backbone``) or the network of a NeCo file.
        dropped: keys the map must report as dropped (after the prefix).
        selects: whether the format selects the prefix (keys outside it are counted).
    """

    id: str
    backbone: str
    build: Callable[[], tuple[dict[str, Any], dict[str, torch.Tensor]]]
    registers: str = "absent"
    sd_path: tuple[str, ...] = ()
    prefix: str = ""
    release: str | None = None
    dropped: tuple[str, ...] = ()
    selects: bool = False


_V2_DROP = ("mask_token",) + PROJ

BASE = [
    Case("dinov2", "dinov2_vits14", lambda: dinov2_hub_file(registers=0, seed=1),
         dropped=("mask_token",)),
    Case("dinov2_reg", "dinov2_vits14_reg", lambda: dinov2_hub_file(registers=4, seed=2),
         registers="convert", dropped=("mask_token",)),
    Case("dinov2_xr", "dinov2_vits14_xr", lambda: dinov2_hub_file(registers=4, seed=3),
         registers="drop", dropped=("mask_token", "register_tokens")),
    Case("dino_full_teacher", "dino_vits16", lambda: dino_full_checkpoint(seed=4),
         sd_path=("teacher",), prefix="backbone.", dropped=HEAD),
    Case("ibot", "ibot_vits16", lambda: ibot_file(seed=5), sd_path=("state_dict",),
         dropped=("masked_embed",)),
    Case("cribo", "cribo_vits16", lambda: cribo_file(seed=6), sd_path=("teacher",),
         prefix="backbone.", dropped=HEAD),
    Case("leopart", "leopart_vits16", lambda: leopart_file(seed=7, teacher=True),
         prefix="model.", dropped=PROJ + ("prototypes.weight",), selects=True),
    Case("timetuning", "timetuning_vits16", lambda: timetuning_file(seed=8),
         prefix="feature_extractor.backbone.", selects=True),
    Case("release_dinov2_model", "dinov2_vits14",
         lambda: neco_release_file("dinov2", "student", seed=9), release="student",
         dropped=_V2_DROP),
    Case("release_dinov2_teacher", "dinov2_vits14",
         lambda: neco_release_file("dinov2", "teacher", seed=9), release="teacher",
         dropped=_V2_DROP),
    Case("release_dinov2r_model", "dinov2_vits14_reg",
         lambda: neco_release_file("dinov2_reg", "student", seed=10), registers="convert",
         release="student", dropped=_V2_DROP),
    Case("release_dinov2r_teacher", "dinov2_vits14_reg",
         lambda: neco_release_file("dinov2_reg", "teacher", seed=10), registers="convert",
         release="teacher", dropped=_V2_DROP),
    Case("release_xr_model", "dinov2_vits14_xr",
         lambda: neco_release_file("dinov2", "student", seed=11), release="student",
         dropped=_V2_DROP),
    Case("release_xr_teacher", "dinov2_vits14_xr",
         lambda: neco_release_file("dinov2", "teacher", seed=11), release="teacher",
         dropped=_V2_DROP),
    Case("release_dino_model", "dino_vits16",
         lambda: neco_release_file("dino", "student", seed=12), release="student", dropped=PROJ),
    Case("release_dino_teacher", "dino_vits16",
         lambda: neco_release_file("dino", "teacher", seed=12), release="teacher", dropped=PROJ),
]  # fmt: skip

VARIANTS = [
    Case("leopart_unprefixed", "leopart_vits16", lambda: leopart_file(seed=13, prefix=""),
         dropped=PROJ + ("prototypes.weight",), selects=True),
    Case("timetuning_no_teacher", "timetuning_vits16",
         lambda: timetuning_file(seed=15, teacher=False), prefix="feature_extractor.backbone.",
         selects=True),
    Case("release_model_prefixed_in_state_dict", "dinov2_vits14_xr",
         lambda: neco_release_file("dinov2", "student", seed=16, prefix="model.", container=True),
         sd_path=("state_dict",), prefix="model.", release="student", dropped=_V2_DROP,
         selects=True),
    Case("release_teacher_prefixed", "dinov2_vits14_reg",
         lambda: neco_release_file("dinov2_reg", "teacher", seed=17, prefix="teacher."),
         registers="convert", prefix="teacher.", release="teacher", dropped=_V2_DROP,
         selects=True),
    Case("release_timetuning_model", "timetuning_vits16",
         lambda: neco_release_file("dino", "student", seed=18), release="student", dropped=PROJ),
    Case("release_leopart_teacher", "leopart_vits16",
         lambda: neco_release_file("dino", "teacher", seed=19), release="teacher", dropped=PROJ),
    Case("lightning_teacher", "dinov2_vits14_xr", lambda: _lightning("teacher", "dinov2"),
         sd_path=("state_dict",), prefix="teacher.", release="teacher", dropped=_V2_DROP,
         selects=True),
]  # fmt: skip


def _lightning(which: str, arch: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Both networks in one Lightning file (the student one: test_export_cli_... and
    tests/test_weights.py)."""
    ckpt, student, teacher = neco_lightning_checkpoint(arch, seed=20)
    return ckpt, student if which == "student" else teacher


@functools.lru_cache(maxsize=1)  # tests of one case run back to back; keep memory low
def _built(case: Case) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return case.build()


def _fresh(case: Case) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A shallow copy of the case's file (safe to edit its state dict), its ViT, the state dict."""
    obj, vit = _built(case)
    obj = dict(obj)
    node = obj
    for part in case.sd_path:
        node[part] = dict(node[part])
        node = node[part]
    return obj, vit, node


def _load(case: Case, obj: dict[str, Any], tmp_path: Path) -> Backbone:
    path = tmp_path / ("neco_model.ckpt" if case.release else "weights.pth")
    torch.save(obj, path)
    if case.release is not None:
        return load_neco_checkpoint(
            path, case.backbone, which=case.release, pos_embed_interp="official"
        )
    return build_backbone(
        case.backbone,
        weights=path,
        cache_dir=None,
        drop_path_rate=0.0,
        pos_embed_interp="official",
        seed=0,
    )


def _assert_equal(bb: Backbone, want: dict[str, torch.Tensor]) -> None:
    got = bb.vit.state_dict()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("case", BASE + VARIANTS, ids=lambda c: c.id)
def test_format_loads_strictly_with_the_source_tensors(case: Case, tmp_path) -> None:
    obj, vit, sd = _fresh(case)
    bb = _load(case, obj, tmp_path)
    _assert_equal(bb, to_timm(vit, registers=case.registers))
    report = bb.load_report
    assert sorted(report["dropped"]) == sorted(case.dropped)
    outside = sum(not k.startswith(case.prefix) for k in sd) if case.selects else 0
    assert report["ignored_outside_prefix"] == outside
    assert report["prefix"] == (case.prefix if case.selects else "")
    path = Path(report["source"])
    assert report["sha256"] == sha256_file(path) and report["file"] == str(path)
    if case.release is None:
        assert report["key_map"] == BACKBONES[case.backbone].key_map
    else:
        assert report["key_map"].startswith("neco_release[")


def _negative_checks(case: Case) -> tuple[str, ...]:
    """``outside`` only where the file has structure beyond the bare ViT dict."""
    structured = bool(case.sd_path or case.prefix or case.release)
    return ("missing", "unknown") + (("outside",) if structured else ())


#: The negative checks run on every base layout, case-major so that each file is generated
#: once. Skipped as duplicates: a release's teacher file (its model file's layout) and the XR
#: release file (the plain DINOv2 release layout, into a backbone of the same architecture).
NEGATIVE = [
    (case, check)
    for case in BASE
    if not (case.id.startswith("release_") and case.id.endswith("_teacher"))
    and case.id != "release_xr_model"
    for check in _negative_checks(case)
]


@pytest.mark.parametrize(
    ("case", "check"), NEGATIVE, ids=[f"{c.id}-{k}" for c, k in NEGATIVE]
)
def test_one_key_too_few_or_too_many_fails_naming_it(case: Case, check: str, tmp_path) -> None:
    """``missing``: one backbone key deleted; ``unknown``: one unknown key among the backbone's;
    ``outside``: one key of no documented group (not a head, prototype or teacher copy) next to
    the backbone: never dropped silently."""
    obj, _, sd = _fresh(case)
    if check == "missing":
        del sd[case.prefix + "blocks.5.mlp.fc1.bias"]
        pattern = r"(?m)missing keys \(1\): blocks\.5\.mlp\.fc1\.bias$"
    elif check == "unknown":
        sd[case.prefix + "blocks.0.attn.extra"] = torch.zeros(3)
        pattern = r"(?m)unexpected keys.* \(1\): blocks\.0\.attn\.extra$"
    else:
        sd["decoder.weight"] = torch.zeros(3)
        pattern = r"(?m)unexpected keys.* \(1\): decoder\.weight$"
        if case.selects:
            pattern = rf"(?m)outside the backbone prefix {re.escape(repr(case.prefix))} " + (
                r"\(1\): decoder\.weight$"
            )
    with pytest.raises(WeightsError, match=pattern):
        _load(case, obj, tmp_path)


def test_timetuning_drops_exactly_the_documented_groups(tmp_path) -> None:
    case = next(c for c in BASE if c.id == "timetuning")
    obj, _, sd = _fresh(case)
    sd["teacher.projector.weight"] = torch.zeros(2)  # a teacher key outside the documented groups
    with pytest.raises(WeightsError, match=r"\(1\): teacher\.projector\.weight"):
        _load(case, obj, tmp_path)
    assert KEY_MAPS["timetuning"].outside is not None
    assert set(KEY_MAPS["timetuning"].outside) == {
        r"feature_extractor\.head\..+",
        r"prototypes",
        r"teacher\.backbone\..+",
        r"teacher\.head\..+",
        r"teacher_prototypes",
    }


def test_release_file_without_register_tokens_fails_on_the_register_backbone(tmp_path) -> None:
    obj, _ = neco_release_file("dinov2", "student", seed=21)
    torch.save(obj, tmp_path / "x_model.ckpt")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): reg_token"):
        load_neco_checkpoint(
            tmp_path / "x_model.ckpt", "dinov2_vits14_reg", which="student",
            pos_embed_interp="official",
        )  # fmt: skip


def test_release_register_file_fails_on_the_xr_backbone(tmp_path) -> None:
    obj, _ = neco_release_file("dinov2_reg", "student", seed=22)
    torch.save(obj, tmp_path / "x_model.ckpt")
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): register_tokens"):
        load_neco_checkpoint(
            tmp_path / "x_model.ckpt", "dinov2_vits14_xr", which="student",
            pos_embed_interp="official",
        )  # fmt: skip


def test_export_cli_takes_the_teacher_of_a_lightning_checkpoint(tmp_path) -> None:
    ckpt, _, teacher = neco_lightning_checkpoint("dino", seed=23)
    torch.save(ckpt, tmp_path / "last.ckpt")
    out = tmp_path / "teacher.safetensors"
    report = export_from_checkpoint(
        tmp_path / "last.ckpt", "dino_vits16", out, prefix="teacher.", fmt="neco_release",
        pos_embed_interp=None,
    )  # fmt: skip
    assert report["prefix"] == "teacher."
    _assert_equal(load_exported(out, "dino_vits16", pos_embed_interp="official"), teacher)
    with pytest.raises(WeightsError, match="--prefix"):
        export_from_checkpoint(
            tmp_path / "last.ckpt", "dino_vits16", out, prefix="student.", fmt="neco_release",
            pos_embed_interp=None,
        )  # fmt: skip


def test_every_registry_key_map_is_covered_here() -> None:
    covered = {BACKBONES[c.backbone].key_map for c in BASE if c.release is None}
    assert covered == set(KEY_MAPS) - {"timm"}  # timm: tests/test_export.py
