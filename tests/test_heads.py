"""Tests for ``neco.method.heads.ProjectionHead`` (method.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neco.method.heads import ProjectionHead

torch.set_num_threads(1)


def test_output_shape_and_unit_norm() -> None:
    head = ProjectionHead(16, 32, 8, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, 16) * 10
    y = head(x)
    assert y.shape == (2, 5, 8)
    assert torch.allclose(y.norm(dim=-1), torch.ones(2, 5), atol=1e-6)


def test_structure_and_init() -> None:
    head = ProjectionHead(64, 512, 32, 3, generator=torch.Generator().manual_seed(0))
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    dims = [(m.in_features, m.out_features) for m in head.mlp if isinstance(m, nn.Linear)]
    assert dims == [(64, 512), (512, 512), (512, 32)]
    weights = torch.cat([m.weight.flatten() for m in head.mlp if isinstance(m, nn.Linear)])
    assert abs(weights.std().item() - 0.02) < 0.001  # trunc-normal, std 0.02 (cut at +-2)
    assert weights.abs().max() <= 2.0
    assert all(torch.all(m.bias == 0) for m in head.mlp if isinstance(m, nn.Linear))
    single = ProjectionHead(4, 99, 3, 1, generator=None)
    assert [type(m) for m in single.mlp] == [nn.Linear]


def test_seeded_and_independent() -> None:
    a = ProjectionHead(8, 16, 4, 2, generator=torch.Generator().manual_seed(3))
    b = ProjectionHead(8, 16, 4, 2, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    g = torch.Generator().manual_seed(3)
    s, t = ProjectionHead(8, 16, 4, 2, generator=g), ProjectionHead(8, 16, 4, 2, generator=g)
    assert not torch.equal(s.mlp[0].weight, t.mlp[0].weight)  # independent init (official)


def test_bad_dims() -> None:
    with pytest.raises(ValueError, match="train.head.n_layers"):
        ProjectionHead(8, 16, 4, 0, generator=None)
