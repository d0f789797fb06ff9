"""Test helpers: synthetic checkpoints in the *official* key layouts, and an independent ViT.

The key names here are written out by hand from the DINOv2 (``dinov2/models/
vision_transformer.py``) and DINO (``vision_transformer.py``, ``DINOHead``) code bases, not
derived from timm or from ``neco.models.checkpoints``, so loading them tests the key maps.
``reference_vit_forward`` is a from-scratch functional ViT that reads those official names
and reproduces DINOv2's ``prepare_tokens_with_masks`` / ``interpolate_pos_encoding``.
"""

from __future__ import annotations

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
