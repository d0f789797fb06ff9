"""``neco.pretrain.diagnostics``: the cross-view neighbour-consistency diagnostic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from neco.config.method import CropConfig
from neco.method.augment import PhotometricParams
from neco.pretrain.diagnostics import cross_view_consistency, reference_tokens, topk_overlap

CROPS = CropConfig(num_global=2, num_local=0, global_scale=[0.5, 1.0], local_scale=[0.1, 0.4],
                   ratio=[0.75, 4 / 3], min_intersection=0.01, second_global_factor=2.0,
                   max_retries=1000, global_size=32, local_size=16)  # fmt: skip


def test_identical_views_overlap_fully() -> None:
    x, refs = torch.randn(50, 16), torch.randn(200, 16)
    assert torch.equal(topk_overlap(x, x.clone(), refs, k=10), torch.ones(50))


def test_unrelated_views_overlap_at_chance() -> None:
    torch.manual_seed(0)
    c = topk_overlap(torch.randn(4000, 16), torch.randn(4000, 16), torch.randn(100, 16), k=10)
    assert float(c.mean()) == pytest.approx(10 / 100, abs=0.01)


def test_topk_overlap_checks_k() -> None:
    with pytest.raises(ValueError, match="k=5"):
        topk_overlap(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 3), k=5)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def _colour_features(images: torch.Tensor) -> torch.Tensor:
    """Mean colour of each 8x8 patch: ``(B, 3, S, S) -> (B, (S/8)**2, 3)``."""
    pooled = torch.nn.functional.avg_pool2d(images, 8)
    return pooled.flatten(2).transpose(1, 2)


def test_consistency_of_a_geometric_feature_beats_noise() -> None:
    images = _images(4)
    refs, owner = reference_tokens(_colour_features, images, input_size=32, n_refs=40, seed=0)
    no_photo = PhotometricParams(0.0, 0.0)
    args = {"crops": CROPS, "photometric": no_photo, "patch_size": 8, "roi_k": 2, "k": 4,
            "seed": 0}  # fmt: skip
    good = cross_view_consistency(_colour_features, images, refs, **args)  # type: ignore[arg-type]

    def noise(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape[0], 16, 3)

    bad = cross_view_consistency(noise, images, refs, reference_owner=owner,
                                 image_ids=list(range(4)), **args)  # type: ignore[arg-type]
    assert good.n_pairs == 4 * 4 and good.chance == pytest.approx(0.1)
    assert good.mean > bad.mean + 0.1


def test_neighbour_label_agreement() -> None:
    from neco.pretrain.diagnostics import neighbour_label_agreement

    labels = torch.arange(4).repeat_interleave(5)
    clustered = torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(20, 4)
    res = neighbour_label_agreement(clustered, labels, clustered, labels, k=3)
    assert res["agreement"] == 1.0 and res["chance"] == 0.25
    noise = neighbour_label_agreement(torch.randn(20, 4), labels, clustered, labels, k=3)
    assert noise["agreement"] < 1.0
