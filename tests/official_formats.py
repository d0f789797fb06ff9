"""Test helpers: synthetic checkpoints in the *official* key layouts, and an independent ViT.

The key names here are written out by hand from the DINOv2 (``dinov2/models/
vision_transformer.py``) and DINO (``vision_transformer.py``, ``DINOHead``) code bases, not
derived from timm or from ``neco.models.checkpoints``, so loading them tests the key maps. The
whole-file builders at the end (``dino_full_checkpoint``, ``ibot_file``, ``cribo_file``,
``leopart_file``, ``timetuning_file``, ``neco_release_file``, ``neco_lightning_checkpoint``)
add each publisher's containers and extra groups as documented in
``/work/shared/notes/checkpoints.md`` (M1-M5; the publishers' READMEs and model code).
``reference_vit_forward`` is a from-scratch functional ViT that reads those official names
and reproduces DINOv2's ``prepare_tokens_with_masks`` / ``interpolate_pos_encoding``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F


def _t(gen: torch.Generator, *shape: int, scale: float = 0.02, mean: float = 0.0) -> torch.Tensor:
    return mean + scale * torch.randn(*shape, generator=gen)


def official_vit_state_dict(
    *,
    dim: int,
    depth: int,
    patch: int,
    grid: int,
    registers: int,
    layerscale: bool,
    mask_token: bool,
    seed: int,
) -> dict[str, torch.Tensor]:
    """A DINOv2-style (``layerscale=True``) or DINO-style ViT state dict with official names."""
    g = torch.Generator().manual_seed(seed)
    sd = {"cls_token": _t(g, 1, 1, dim), "pos_embed": _t(g, 1, 1 + grid * grid, dim, scale=0.5)}
    if mask_token:
        sd["mask_token"] = _t(g, 1, dim)
    if registers:
        sd["register_tokens"] = _t(g, 1, registers, dim, scale=0.5)
    sd["patch_embed.proj.weight"] = _t(g, dim, 3, patch, patch)
    sd["patch_embed.proj.bias"] = _t(g, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"] = _t(g, dim, scale=0.1, mean=1.0)
        sd[b + "norm1.bias"] = _t(g, dim)
        sd[b + "attn.qkv.weight"] = _t(g, 3 * dim, dim, scale=0.05)
        sd[b + "attn.qkv.bias"] = _t(g, 3 * dim)
        sd[b + "attn.proj.weight"] = _t(g, dim, dim, scale=0.05)
        sd[b + "attn.proj.bias"] = _t(g, dim)
        if layerscale:
            sd[b + "ls1.gamma"] = _t(g, dim, scale=0.05, mean=0.3)
        sd[b + "norm2.weight"] = _t(g, dim, scale=0.1, mean=1.0)
        sd[b + "norm2.bias"] = _t(g, dim)
        sd[b + "mlp.fc1.weight"] = _t(g, 4 * dim, dim, scale=0.05)
        sd[b + "mlp.fc1.bias"] = _t(g, 4 * dim)
        sd[b + "mlp.fc2.weight"] = _t(g, dim, 4 * dim, scale=0.05)
        sd[b + "mlp.fc2.bias"] = _t(g, dim)
        if layerscale:
            sd[b + "ls2.gamma"] = _t(g, dim, scale=0.05, mean=0.3)
    sd["norm.weight"] = _t(g, dim, scale=0.1, mean=1.0)
    sd["norm.bias"] = _t(g, dim)
    return sd


def dinov2_vits14(*, registers: int, seed: int) -> dict[str, torch.Tensor]:
    """``dinov2_vits14[_reg4]_pretrain.pth`` contents (random values)."""
    return official_vit_state_dict(
        dim=384,
        depth=12,
        patch=14,
        grid=37,
        registers=registers,
        layerscale=True,
        mask_token=True,
        seed=seed,
    )


def dino_vits16(*, seed: int) -> dict[str, torch.Tensor]:
    """A DINO v1 ViT-S/16 backbone state dict (random values)."""
    return official_vit_state_dict(
        dim=384,
        depth=12,
        patch=16,
        grid=14,
        registers=0,
        layerscale=False,
        mask_token=False,
        seed=seed,
    )


def dino_head(*, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """DINOHead keys (3-layer MLP 2048/2048/256, weight-normed last layer, 65536 -> shrunk)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "mlp.0.weight": _t(g, 32, dim),
        "mlp.0.bias": _t(g, 32),
        "mlp.2.weight": _t(g, 32, 32),
        "mlp.2.bias": _t(g, 32),
        "mlp.4.weight": _t(g, 8, 32),
        "mlp.4.bias": _t(g, 8),
        "last_layer.weight_g": _t(g, 16, 1),
        "last_layer.weight_v": _t(g, 16, 8),
    }


def ref_interpolate_pos_encoding(
    pos_embed: torch.Tensor,
    n_tokens: int,
    w: int,
    h: int,
    *,
    patch: int,
    offset: float,
    antialias: bool,
) -> torch.Tensor:
    """DINOv2 ``interpolate_pos_encoding`` re-derived: ``w`` = image dim 2, ``h`` = dim 3."""
    npatch = n_tokens - 1
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch, h // patch
    m = int(math.sqrt(n))
    assert n == m * m
    if offset:
        kwargs: dict = {"scale_factor": (float(w0 + offset) / m, float(h0 + offset) / m)}
    else:
        kwargs = {"size": (w0, h0)}
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=antialias,
        **kwargs,
    )
    assert (w0, h0) == tuple(patch_pos_embed.shape[-2:])
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def reference_vit_forward(
    sd: dict[str, torch.Tensor],
    x: torch.Tensor,
    *,
    patch: int,
    num_heads: int,
    offset: float,
    antialias: bool,
) -> torch.Tensor:
    """Patch tokens of a DINOv2/DINO ViT computed from official-name weights, from scratch.

    Returns:
        ``(B, N, D)`` final-norm patch tokens (CLS and registers dropped).
    """
    b, _, w, h = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1)
    t = t + ref_interpolate_pos_encoding(
        sd["pos_embed"], t.shape[1], w, h, patch=patch, offset=offset, antialias=antialias
    )
    reg: torch.Tensor | None = sd.get("register_tokens")
    n_reg = 0 if reg is None else reg.shape[1]
    if reg is not None:
        t = torch.cat([t[:, :1], reg.expand(b, -1, -1), t[:, 1:]], dim=1)
    dim = t.shape[-1]
    hd = dim // num_heads
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * hd**-0.5, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        y = F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        t = t + (y * sd[p + "ls1.gamma"] if p + "ls1.gamma" in sd else y)
        y = F.layer_norm(t, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.linear(
            F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
        t = t + (y * sd[p + "ls2.gamma"] if p + "ls2.gamma" in sd else y)
    t = F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return t[:, 1 + n_reg :]


# ------------------------------------------------------------------------------------------
# Whole files in each published layout (checkpoints.md M1-M5). Random values; the key names and
# containers are the originals', including the non-backbone groups. Heads, prototypes and other
# dropped groups use small shapes (their shapes are never read); the ViT has the registry's real
# dims. Every builder returns ``(file_object, backbone)``: ``backbone`` is the ViT state dict in
# official names (DINOv2 / DINO), i.e. what must end up in the model.


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _shifted(sd: dict[str, torch.Tensor], delta: float) -> dict[str, torch.Tensor]:
    """Another network with the same names (a teacher / momentum copy)."""
    return {k: v + delta for k, v in sd.items()}


def vit_for(arch: str, *, seed: int) -> dict[str, torch.Tensor]:
    """The official-name ViT of a release architecture.

    ``dinov2`` (ViT-S/14, 0 registers, ``mask_token``), ``dinov2_reg`` (4 registers),
    ``dino`` (DINO ViT-S/16: no LayerScale, no mask token).
    """
    if arch == "dinov2":
        return dinov2_vits14(registers=0, seed=seed)
    if arch == "dinov2_reg":
        return dinov2_vits14(registers=4, seed=seed)
    if arch == "dino":
        return dino_vits16(seed=seed)
    raise ValueError(arch)


def projection_head(
    *, dim: int, seed: int, hidden: int = 32, out: int = 16
) -> dict[str, torch.Tensor]:
    """NeCo / Leopart ``projection_head``: Linear-GELU-Linear-GELU-Linear (indices 0, 2, 4)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"0": (hidden, dim), "2": (hidden, hidden), "4": (out, hidden)}
    sd: dict[str, torch.Tensor] = {}
    for i, (o, n) in shapes.items():
        sd[f"projection_head.{i}.weight"] = _t(g, o, n)
        sd[f"projection_head.{i}.bias"] = _t(g, o)
    return sd


def dinov2_hub_file(*, registers: int, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """``dinov2_vits14[_reg4]_pretrain.pth``: the plain hub state dict (``mask_token`` included)."""
    sd = dinov2_vits14(registers=registers, seed=seed)
    return dict(sd), sd


def dino_full_checkpoint(*, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """DINO ``*_full_checkpoint.pth``: ``student`` (DDP ``module.``), ``teacher``
    (``backbone.*`` + DINOHead ``head.*``), optimizer, epoch, args, dino_loss."""
    vit = dino_vits16(seed=seed)
    head = dino_head(dim=384, seed=seed + 1)
    teacher = {**_prefixed("backbone.", vit), **_prefixed("head.", head)}
    student = _prefixed("module.", _shifted(teacher, 1.0))
    ckpt = {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 8)},
    }
    return ckpt, vit


def ibot_file(*, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """iBOT ``checkpoint_teacher.pth``: ``{'state_dict': teacher backbone}``, the backbone
    holding iBOT's ``masked_embed`` (1, D)."""
    vit = dino_vits16(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    return {"state_dict": {**vit, "masked_embed": _t(g, 1, 384)}}, vit


def cribo_file(*, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """CrIBo checkpoint: DINO-like full checkpoint, ``teacher`` = ``backbone.*`` + ``head.*``."""
    vit = dino_vits16(seed=seed)
    head = dino_head(dim=384, seed=seed + 1)
    teacher = {**_prefixed("backbone.", vit), **_prefixed("head.", head)}
    ckpt = {
        "student": _prefixed("module.", _shifted(teacher, 1.0)),
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 800,
        "args": argparse.Namespace(arch="vit_small", patch_size=16),
    }
    return ckpt, vit


def leopart_file(
    *, seed: int, prefix: str = "model.", teacher: bool = False
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Leopart full ckpt: the ViT + ``projection_head.*`` + ``prototypes.weight`` under one
    module prefix (the README's loader strips one component; ``prefix=""``: unprefixed), and
    optionally a ``teacher.*`` momentum copy."""
    vit = dino_vits16(seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    model = {**vit, **projection_head(dim=384, seed=seed + 1), "prototypes.weight": _t(g, 10, 16)}
    sd = _prefixed(prefix, model)
    if teacher:
        sd.update(_prefixed("teacher.", _shifted(model, 1.0)))
    return sd, vit


def timetuning_file(*, seed: int, teacher: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """TimeT ``TimeT.pth``: the flat TimeT module state dict: ``feature_extractor.backbone.*``
    (ViT), ``feature_extractor.head.*``, ``prototypes`` and, after momentum init,
    ``teacher.backbone.*``, ``teacher.head.*``, ``teacher_prototypes``."""
    vit = dino_vits16(seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    head = {
        "0.weight": _t(g, 32, 384), "0.bias": _t(g, 32),
        "2.weight": _t(g, 16, 32), "2.bias": _t(g, 16),
    }  # fmt: skip
    sd = {
        **_prefixed("feature_extractor.backbone.", vit),
        **_prefixed("feature_extractor.head.", head),
        "prototypes": _t(g, 10, 16),
    }
    if teacher:
        sd.update(_prefixed("teacher.backbone.", _shifted(vit, 1.0)))
        sd.update(_prefixed("teacher.head.", _shifted(head, 1.0)))
        sd["teacher_prototypes"] = _t(g, 10, 16)
    return sd, vit


def neco_release_file(
    arch: str, which: str, *, seed: int = 0, prefix: str = "", container: bool = False
) -> tuple[dict, dict[str, torch.Tensor]]:
    """A released NeCo ``*_model.ckpt`` (``which="student"``) / ``*_teacher.ckpt`` file.

    As the NeCo README loads it: one network's ViT state dict in official names (``arch``:
    ``dinov2`` also for the XR files, ``dinov2_reg``, ``dino`` for the DINO/TimeT/Leopart
    files) plus NeCo's ``projection_head.*``. ``prefix`` (``model.`` / ``teacher.``) and
    ``container`` (``{'state_dict': ...}``) give the variants the official evaluation code also
    accepts. Student and teacher get different values.
    """
    vit = _shifted(vit_for(arch, seed=seed), 0.0 if which == "student" else 1.0)
    sd = _prefixed(prefix, {**vit, **projection_head(dim=384, seed=seed + 7)})
    return ({"state_dict": sd} if container else sd), vit


def neco_lightning_checkpoint(arch: str, *, seed: int = 0) -> tuple[dict, dict, dict]:
    """A NeCo Lightning ``.ckpt``: ``state_dict`` with ``model.*`` and ``teacher.*`` (each ViT +
    projection head) plus trainer state. Returns ``(ckpt, student_vit, teacher_vit)``."""
    s_obj, s_vit = neco_release_file(arch, "student", seed=seed, prefix="model.")
    t_obj, t_vit = neco_release_file(arch, "teacher", seed=seed, prefix="teacher.")
    ckpt = {"state_dict": {**s_obj, **t_obj}, "epoch": 24, "global_step": 46200,
            "hyper_parameters": {"lr": 1e-5}}  # fmt: skip
    return ckpt, s_vit, t_vit


def to_timm(sd: dict[str, torch.Tensor], *, registers: str) -> dict[str, torch.Tensor]:
    """The documented conversion of an official-name ViT into the model's timm layout.

    ``registers``: ``absent`` (names already equal), ``convert`` (DINOv2 register model: timm
    ``reg_token`` and ``no_embed_class``: ``cls_token + pos_embed[:, :1]``, ``pos_embed[:, 1:]``)
    or ``drop`` (XR: ``register_tokens`` discarded). ``mask_token`` is never part of the model.
    """
    out = {k: v for k, v in sd.items() if k != "mask_token"}
    if registers == "drop":
        out.pop("register_tokens")
    elif registers == "convert":
        pos = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out
