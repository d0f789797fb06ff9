"""Registry-wide backbone tests: shapes, token dropping, determinism, input checks, extractor."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from neco.evals.extractor import FeatureExtractor
from neco.models.registry import BACKBONES, WeightsError, get_spec
from neco.models.vit import (
    Backbone,
    FrozenExtractor,
    NecoVisionTransformer,
    build_backbone,
    create_vit,
)

torch.set_num_threads(1)


def _build(
    name: str, *, seed: int = 0, drop_path_rate: float = 0.0, interp: str = "official"
) -> Backbone:
    return build_backbone(
        name,
        weights="random",
        cache_dir=None,
        drop_path_rate=drop_path_rate,
        pos_embed_interp=interp,
        seed=seed,
    )


REQUIRED = {
    "vit_tiny_demo",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vits14_xr",
    "dinov2_vitb14_xr",
    "dino_vits16",
    "dino_vitb16",
    "ibot_vits16",
    "ibot_vitb16",
    "cribo_vits16",
    "cribo_vitb16",
    "timetuning_vits16",
    "leopart_vits16",
}


def test_registry_has_every_required_name() -> None:
    assert REQUIRED <= set(BACKBONES)
    with pytest.raises(KeyError, match="unknown backbone 'vit_huge'.*dinov2_vits14"):
        get_spec("vit_huge")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_returns_patch_tokens(name: str) -> None:
    """Registry-wide (timm style): every entry builds from random init and gives (B, s*s, D)."""
    spec = BACKBONES[name]
    bb = _build(name).eval()
    p = spec.patch_size
    assert (bb.patch_size, bb.embed_dim, len(bb.blocks)) == (p, spec.embed_dim, spec.depth)
    assert bb.num_prefix_tokens == 1 + spec.num_registers
    assert bb.native_grid == (spec.native_img_size // p,) * 2
    assert isinstance(bb.vit, VisionTransformer)
    n_params = sum(t.numel() for t in bb.parameters())
    assert n_params > {192: 1e6, 384: 21e6, 768: 85e6}[spec.embed_dim]
    s = 2
    x = torch.randn(2, 3, s * p, s * p, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = bb(x)
        rect = bb(x[:1, :, :, :p])  # non-square: 2 x 1 tokens
    assert out.shape == (2, s * s, spec.embed_dim) and out.dtype == torch.float32
    assert not torch.isnan(out).any() and torch.isfinite(out).all()
    assert rect.shape == (1, 2, spec.embed_dim) and torch.isfinite(rect).all()
    if spec.embed_dim == 192:  # a few fast extra sizes on the demo model
        for h, w in ((48, 48), (112, 112), (112, 64)):
            assert bb(torch.randn(2, 3, h, w)).shape == (2, (h // 16) * (w // 16), 192)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_creates_timms_own_model(name: str) -> None:
    """``create_vit`` = ``timm.create_model`` (same class up to the ``_pos_embed`` override,
    same seeded weights, same keys), and the Backbone's keys are ``vit.`` + timm's."""
    import timm

    spec = BACKBONES[name]
    ours = create_vit(spec, drop_path_rate=0.0, seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        plain = timm.create_model(
            spec.timm_name, pretrained=False, num_classes=0, img_size=spec.native_img_size,
            dynamic_img_size=True, **dict(spec.timm_kwargs),
        )  # fmt: skip
    assert type(plain) is VisionTransformer and isinstance(ours, NecoVisionTransformer)
    assert ours.__class__.__mro__[1] is VisionTransformer
    assert NecoVisionTransformer.forward_features is VisionTransformer.forward_features
    assert repr(ours) == repr(plain).replace("VisionTransformer(", "NecoVisionTransformer(", 1)
    sa, sb = ours.state_dict(), plain.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    bb = Backbone(ours, spec, "official")
    assert list(bb.state_dict()) == [f"vit.{k}" for k in sb]


def test_prefix_tokens_are_cls_and_registers() -> None:
    bb = _build("dinov2_vits14_reg").eval()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        all_tokens = bb.forward_tokens(x)
        assert all_tokens.shape[1] == 5 + 6
        assert torch.equal(bb(x), all_tokens[:, 5:])
        assert torch.equal(all_tokens, bb.vit.forward_features(x))  # timm's own path
        # the last norm is applied: tokens have ~zero mean over D before the affine part
        ln = bb.vit.norm
        raw = (all_tokens - ln.bias) / ln.weight
        assert raw.mean(-1).abs().max() < 1e-4


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = (
        _build("vit_tiny_demo", seed=1),
        _build("vit_tiny_demo", seed=1),
        _build("vit_tiny_demo", seed=2),
    )
    assert torch.equal(torch.rand(3), expected_next)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["vit.blocks.0.attn.qkv.weight"], sc["vit.blocks.0.attn.qkv.weight"])


def test_non_multiple_sizes_raise_unless_floored() -> None:
    bb = _build("vit_tiny_demo").eval()
    with pytest.raises(
        ValueError, match=r"98x96 px is not a positive multiple of the patch size 16"
    ):
        bb(torch.randn(1, 3, 98, 96))
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        bb(torch.randn(3, 96, 96))
    x = torch.randn(1, 3, 98, 98)
    with torch.no_grad():
        floored = bb(x, floor_to_patch=True)
        assert floored.shape == (1, 36, 192)
        assert torch.equal(floored, bb(x[:, :, :96, :96]))  # the official conv ignores the rest
        assert bb(torch.randn(1, 3, 98, 111), floor_to_patch=True).shape == (1, 6 * 6, 192)
        with pytest.raises(ValueError, match="not a positive multiple"):
            bb(torch.randn(1, 3, 15, 32), floor_to_patch=True)  # floors to 0 rows


def test_drop_path_is_linear_over_depth_and_inactive_in_eval() -> None:
    bb = _build("vit_tiny_demo", drop_path_rate=0.1)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in bb.blocks]
    assert rates == pytest.approx([0.1 * i / 3 for i in range(4)])
    x = torch.randn(2, 3, 48, 48)
    bb.eval()
    with torch.no_grad():
        assert torch.equal(bb(x), bb(x))
    bb.train()
    with torch.no_grad():
        assert not torch.equal(bb(x), bb(x))


def test_frozen_extractor_contract() -> None:
    bb = _build("vit_tiny_demo", drop_path_rate=0.1)
    bb.train()
    ext = FrozenExtractor(bb)
    assert isinstance(ext, FeatureExtractor)
    assert (ext.patch_size, ext.embed_dim) == (16, 192)
    bb.train()  # someone flips it back: the extractor still evaluates in eval mode
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    out = ext(x)
    assert out.dtype == torch.float32 and out.shape == (2, 16, 192) and not out.requires_grad
    assert torch.equal(out, ext(x))
    assert not any(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError, match="multiple of the patch"):
        ext(torch.randn(1, 3, 50, 50))


def test_weight_argument_dispatch(tmp_path) -> None:
    spec = get_spec("vit_tiny_demo")
    bb = build_backbone(
        "vit_tiny_demo",
        weights=None,
        cache_dir=None,
        drop_path_rate=0.0,
        pos_embed_interp="official",
        seed=3,
    )  # demo source: random
    assert bb.load_report["weights"] == "random" and spec.weights.kind.value == "random"
    with pytest.raises(WeightsError, match="train.weights: weight file .*absent.pth not found"):
        build_backbone(
            "vit_tiny_demo",
            weights=tmp_path / "absent.pth",
            cache_dir=None,
            drop_path_rate=0.0,
            pos_embed_interp="official",
            seed=0,
        )
    with pytest.raises(ValueError, match="pos_embed_interp"):
        build_backbone(
            "vit_tiny_demo",
            weights="random",
            cache_dir=None,
            drop_path_rate=0.0,
            pos_embed_interp="bilinear",
            seed=0,
        )


def test_registry_is_a_leaf_module() -> None:
    """One entry per backbone, readable by the report without torch: imports no other neco code."""
    import ast
    from pathlib import Path

    import neco.models.registry as registry

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("neco") and not m.startswith("neco.config")]
    assert not [m for m in imported if m.split(".")[0] in ("torch", "timm")]
