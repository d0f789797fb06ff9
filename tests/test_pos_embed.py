"""Position-embedding resampling vs independent re-derivations (method.md §4, §16 #16)."""

from __future__ import annotations

import math

import pytest
import torch
from official_formats import (
    dino_vits16,
    dinov2_vits14,
    ref_interpolate_pos_encoding,
    reference_vit_forward,
)
from timm.models.vision_transformer import VisionTransformer

from neco.models.pos_embed import PosEmbedInterp, parse_pos_embed_interp, resample_patch_pos_embed
from neco.models.registry import BACKBONES
from neco.models.vit import Backbone, build_backbone

torch.set_num_threads(1)


def _bicubic_matrix(n_in: int, n_out: int, scale_factor: float) -> torch.Tensor:
    """(n_out, n_in) weights of torch's bicubic (A = -0.75, no antialias, given scale factor),
    written from the Keys kernel: src = (i + 0.5) / scale_factor - 0.5, border-clamped taps."""
    a = -0.75

    def kern(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) / scale_factor - 0.5
        x0 = math.floor(src)
        for tap in range(-1, 3):
            j = min(max(x0 + tap, 0), n_in - 1)
            w[i, j] += kern(src - (x0 + tap))
    return w


@pytest.fixture(scope="module")
def v2_pos() -> torch.Tensor:
    return dinov2_vits14(registers=0, seed=1)["pos_embed"]


@pytest.mark.parametrize("size", [(98, 98), (224, 224), (448, 448), (504, 504), (98, 224)])
@pytest.mark.parametrize("mode", ["official", "hub_reg"])
def test_matches_dinov2_interpolate_pos_encoding(v2_pos: torch.Tensor, size, mode) -> None:
    """Our resampled grid equals the DINOv2 routine (offset 0.1/no AA, or offset 0/AA)."""
    h, w = size
    grid = (h // 14, w // 14)
    offset, aa = (0.1, False) if mode == "official" else (0.0, True)
    ref = ref_interpolate_pos_encoding(
        v2_pos, 1 + grid[0] * grid[1], h, w, patch=14, offset=offset, antialias=aa
    )
    ours = resample_patch_pos_embed(v2_pos[:, 1:], native_grid=(37, 37), grid=grid, mode=mode)
    torch.testing.assert_close(ours, ref[:, 1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("g", [7, 32, 36])
def test_official_equals_explicit_bicubic_formula(v2_pos: torch.Tensor, g: int) -> None:
    """Independent of F.interpolate: separable Keys bicubic at scale (g + 0.1) / 37."""
    mat = _bicubic_matrix(37, g, (g + 0.1) / 37)
    grid = v2_pos[0, 1:].double().reshape(37, 37, -1)
    ref = torch.einsum("ia,jb,abd->ijd", mat, mat, grid).reshape(1, g * g, -1)
    ours = resample_patch_pos_embed(
        v2_pos[:, 1:], native_grid=(37, 37), grid=(g, g), mode=PosEmbedInterp.OFFICIAL
    )
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5)


def test_modes_differ_off_native_and_agree_at_native(v2_pos: torch.Tensor) -> None:
    patch = v2_pos[:, 1:]
    at = {
        m: resample_patch_pos_embed(patch, native_grid=(37, 37), grid=(7, 7), mode=m)
        for m in PosEmbedInterp
    }
    assert (at[PosEmbedInterp.OFFICIAL] - at[PosEmbedInterp.HUB_REG]).abs().max() > 1e-2
    for m in PosEmbedInterp:
        assert resample_patch_pos_embed(patch, native_grid=(37, 37), grid=(37, 37), mode=m) is patch


def test_dino_v1_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """DINO v1: scale_factor (w0 + 0.1) / sqrt(N) on the 14x14 grid, also for 98 px."""
    pos = dino_vits16(seed=2)["pos_embed"]
    for px in (96, 448):
        g = px // 16
        ref = (
            torch.nn.functional.interpolate(
                pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2),
                scale_factor=((g + 0.1) / math.sqrt(196), (g + 0.1) / math.sqrt(196)),
                mode="bicubic",
            )
            .permute(0, 2, 3, 1)
            .reshape(1, -1, pos.shape[-1])
        )
        ours = resample_patch_pos_embed(
            pos[:, 1:], native_grid=(14, 14), grid=(g, g), mode="official"
        )
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "registers", "mode", "size"),
    [
        ("dinov2_vits14", 0, "official", (98, 98)),
        ("dinov2_vits14", 0, "official", (126, 70)),
        ("dinov2_vits14_reg", 4, "hub_reg", (98, 98)),
        ("dinov2_vits14_reg", 4, "official", (112, 84)),
        ("dinov2_vits14_xr", 4, "official", (98, 98)),
    ],
)
def test_backbone_equals_reference_dinov2_forward(tmp_path, name, registers, mode, size) -> None:
    """Official-format weights through our key map + backbone == a from-scratch DINOv2 ViT."""
    sd = dinov2_vits14(registers=registers, seed=3)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    bb = build_backbone(
        name, weights=path, cache_dir=None, drop_path_rate=0.0, pos_embed_interp=mode, seed=0
    ).eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    ref_sd = dict(sd)
    if name.endswith("_xr"):
        ref_sd.pop("register_tokens")  # XR: a 0-register ViT
    offset, aa = (0.1, False) if mode == "official" else (0.0, True)
    with torch.no_grad():
        ref = reference_vit_forward(ref_sd, x, patch=14, num_heads=6, offset=offset, antialias=aa)
        ours = bb(x)
    assert ours.shape == (2, (size[0] // 14) * (size[1] // 14), 384)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_dino_backbone_equals_reference_forward(tmp_path) -> None:
    sd = dino_vits16(seed=4)
    torch.save(sd, tmp_path / "dino_backbone.pth")
    bb = build_backbone(
        "dino_vits16",
        weights=tmp_path / "dino_backbone.pth",
        cache_dir=None,
        drop_path_rate=0.0,
        pos_embed_interp="official",
        seed=0,
    ).eval()
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_vit_forward(sd, x, patch=16, num_heads=6, offset=0.1, antialias=False)
        torch.testing.assert_close(bb(x), ref, rtol=1e-4, atol=1e-4)


def _randomise_embeddings(vit: VisionTransformer, seed: int) -> None:
    """Non-trivial position embedding and prefix tokens (timm inits the CLS token at ~1e-6)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (vit.pos_embed, vit.cls_token, vit.reg_token):
            if t is not None:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)


def _reference_tokens(vit: VisionTransformer, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The token path written out from timm's pieces + ``resample_patch_pos_embed``.

    This is the former hand-written ``Backbone.forward_tokens`` (before the timm subclass): patch
    embedding, our resampled patch position embedding, CLS (+ its position entry when the layout
    has one) and register tokens, then timm's blocks and final norm.
    """
    p = vit.patch_embed.patch_size[0]
    g0, g1 = x.shape[2] // p, x.shape[3] // p
    t = vit.patch_embed(x)
    b, d = t.shape[0], t.shape[-1]
    t = t.reshape(b, g0 * g1, d)
    pos = vit.pos_embed
    n_prefix_pos = 0 if vit.no_embed_class else vit.num_prefix_tokens
    native = (int(vit.patch_embed.grid_size[0]), int(vit.patch_embed.grid_size[1]))
    patch_pos = resample_patch_pos_embed(
        pos[:, n_prefix_pos:], native_grid=native, grid=(g0, g1), mode=mode
    )
    t = t + patch_pos
    cls = vit.cls_token + pos[:, :1] if n_prefix_pos else vit.cls_token
    prefix = [cls.expand(b, -1, -1)]
    if vit.reg_token is not None:
        prefix.append(vit.reg_token.expand(b, -1, -1))
    t = torch.cat(prefix + [t], dim=1)
    t = vit.norm_pre(vit.patch_drop(vit.pos_drop(t)))
    out: torch.Tensor = vit.norm(vit.blocks(t))
    return out


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_token_path_equals_pos_embed_rule_for_every_backbone(name: str) -> None:
    """Bit-identical (fp32): the timm subclass == timm pieces + ``neco.models.pos_embed``, for
    every registered architecture, every rule, non-square and floored (98 px at p = 16) inputs;
    and its ``_pos_embed`` == timm's own where the rules coincide (``timm``)."""
    spec = BACKBONES[name]
    p = spec.patch_size
    bb = build_backbone(
        name, weights="random", cache_dir=None, drop_path_rate=0.0, pos_embed_interp="official",
        seed=2,
    ).eval()  # fmt: skip
    _randomise_embeddings(bb.vit, seed=3)
    gen = torch.Generator().manual_seed(4)
    inputs = [(torch.randn(2, 3, 2 * p, 3 * p, generator=gen), False),
              (torch.randn(1, 3, 98, 3 * p + 5, generator=gen), True)]  # fmt: skip
    for mode in PosEmbedInterp:
        bb.pos_embed_interp = mode
        assert bb.vit.pos_embed_interp is mode
        for x, floor in inputs:
            cropped = x[:, :, : x.shape[2] // p * p, : x.shape[3] // p * p]
            with torch.no_grad():
                ours = bb.forward_tokens(x, floor_to_patch=floor)
                ref = _reference_tokens(bb.vit, cropped, mode.value)
                assert torch.equal(ours, ref), (name, mode, tuple(x.shape))
                assert torch.equal(bb(x, floor_to_patch=floor), ref[:, bb.num_prefix_tokens :])
        grid = bb.vit.patch_embed(inputs[0][0])
        with torch.no_grad():
            ours_pe, timm_pe = bb.vit._pos_embed(grid), VisionTransformer._pos_embed(bb.vit, grid)
        if mode is PosEmbedInterp.TIMM:
            assert torch.equal(ours_pe, timm_pe)


def _plain_timm(bb: Backbone) -> VisionTransformer:
    """timm's own model (no override) with the backbone's weights."""
    import timm

    spec = bb.spec
    plain = timm.create_model(
        spec.timm_name, pretrained=False, num_classes=0, img_size=spec.native_img_size,
        dynamic_img_size=True, **dict(spec.timm_kwargs),
    )  # fmt: skip
    assert type(plain) is VisionTransformer
    plain.load_state_dict(bb.vit.state_dict(), strict=True)
    return plain.eval()


@pytest.mark.parametrize("name", ["vit_tiny_demo", "dino_vits16", "dinov2_vits14_reg"])
def test_equals_timm_forward_features_where_the_rules_coincide(name: str) -> None:
    """Bit-identical to an unmodified timm ``VisionTransformer.forward_features``: with the
    ``timm`` rule (and ``hub_reg``, the same computation in timm 1.0.31) at non-native grids,
    and with every rule at the native grid (no resampling). Covers the CLS-position layout
    (``dino``) and timm's ``no_embed_class`` register layout (``reg``)."""
    bb = build_backbone(
        name, weights="random", cache_dir=None, drop_path_rate=0.0, pos_embed_interp="timm",
        seed=5,
    ).eval()  # fmt: skip
    _randomise_embeddings(bb.vit, seed=6)
    plain = _plain_timm(bb)
    p = bb.patch_size
    x = torch.randn(1, 3, 7 * p, 5 * p, generator=torch.Generator().manual_seed(2))
    native = torch.randn(1, 3, *(g * p for g in bb.native_grid))
    with torch.no_grad():
        ref, ref_native = plain.forward_features(x), plain.forward_features(native)
        for mode in PosEmbedInterp:
            bb.pos_embed_interp = mode
            if mode is not PosEmbedInterp.OFFICIAL:
                assert torch.equal(bb.forward_tokens(x), ref), mode
                assert torch.equal(bb(x), ref[:, bb.num_prefix_tokens :]), mode
            else:  # the official rule differs from timm's off the native grid
                assert not torch.equal(bb.forward_tokens(x), ref)
            assert torch.equal(bb.forward_tokens(native), ref_native), mode


def test_gradient_reaches_pos_embed_through_resampling() -> None:
    bb = build_backbone(
        "vit_tiny_demo",
        weights="random",
        cache_dir=None,
        drop_path_rate=0.0,
        pos_embed_interp="official",
        seed=0,
    )
    bb(torch.randn(1, 3, 48, 48)).sum().backward()
    assert bb.vit.pos_embed.grad is not None and bb.vit.pos_embed.grad[:, 1:].abs().sum() > 0


def test_bad_mode_and_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"pos_embed_interp: invalid value 'hub'.*official"):
        parse_pos_embed_interp("hub")
    with pytest.raises(ValueError, match="native_grid"):
        resample_patch_pos_embed(
            torch.zeros(1, 10, 4), native_grid=(3, 3), grid=(2, 2), mode="official"
        )
