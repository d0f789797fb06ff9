"""Cross-view neighbour consistency: what the NeCo loss optimises, measured on a backbone.

NeCo (https://arxiv.org/abs/2408.11054, official code https://github.com/vpariza/NeCo) trains
the patches of two views that show the same image location to rank a shared set of reference
patches in the same order. This diagnostic measures that property on frozen backbone tokens:
for every ROI-aligned patch pair ``(a_i, b_i)`` of two augmented global views of one image, the
overlap of their top-k reference neighbours (cosine similarity),

    c_i = |N_k(a_i) ∩ N_k(b_i)| / k,

averaged over pairs. Identical views give 1; features unrelated across views give k / n in
expectation (n references). References are tokens of other images (never the query image), so
the score cannot be won by recognising the image itself.

Views are cut with NeCo's crop geometry (``neco.method.crops``: two global crops under the
overlap constraint) and photometric augmentation (``neco.method.augment``), aligned with
``neco.method.roi.align_pairs`` exactly as in training. It is a diagnostic, not a protocol: no
labels are used and nothing is tuned on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from neco.config.method import CropConfig
from neco.method.augment import PhotometricParams, make_views, to_normalised_tensor
from neco.method.crops import overlap_boxes, sample_views
from neco.method.roi import align_pairs

#: ``(B, 3, S, S)`` normalised images -> ``(B, (S/p)**2, D)`` patch tokens (a FeatureExtractor).
Features = Callable[[torch.Tensor], torch.Tensor]


def topk_overlap(
    queries_a: torch.Tensor, queries_b: torch.Tensor, references: torch.Tensor, *, k: int
) -> torch.Tensor:
    """Per-pair overlap of the top-k cosine neighbours among ``references``.

    Args:
        queries_a: ``(N, D)`` patches of view a.
        queries_b: ``(N, D)`` the same locations in view b.
        references: ``(n, D)`` shared reference patches, ``k <= n``.
        k: neighbours compared.

    Returns:
        ``(N,)`` values in ``{0, 1/k, ..., 1}``.
    """
    if queries_a.shape != queries_b.shape or queries_a.ndim != 2:
        raise ValueError(
            f"topk_overlap: queries must share a (N, D) shape, got {tuple(queries_a.shape)} "
            f"and {tuple(queries_b.shape)}"
        )
    n = references.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"topk_overlap: k={k} must be in [1, {n}] (number of references)")
    refs = F.normalize(references.float(), dim=-1)
    top_a = (F.normalize(queries_a.float(), dim=-1) @ refs.t()).topk(k, dim=1).indices
    top_b = (F.normalize(queries_b.float(), dim=-1) @ refs.t()).topk(k, dim=1).indices
    hits_a = torch.zeros(len(top_a), n, dtype=torch.bool).scatter_(1, top_a, True)
    hits_b = torch.zeros(len(top_b), n, dtype=torch.bool).scatter_(1, top_b, True)
    return (hits_a & hits_b).sum(1).float() / k


@dataclass(frozen=True)
class ConsistencyResult:
    """Cross-view neighbour consistency of one backbone.

    Attributes:
        mean: mean overlap c over all aligned pairs (1 = identical rankings).
        std_over_images: standard deviation of the per-image means.
        chance: k / n, the expected overlap of unrelated features.
        k: neighbours compared.
        n_refs: references.
        n_pairs: aligned patch pairs scored.
    """

    mean: float
    std_over_images: float
    chance: float
    k: int
    n_refs: int
    n_pairs: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-serialisable record."""
        return {
            "mean": self.mean, "std_over_images": self.std_over_images, "chance": self.chance,
            "k": self.k, "n_refs": self.n_refs, "n_pairs": self.n_pairs,
        }  # fmt: skip


def _tokens_as_map(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, s*s, D) -> (B, D, s, s)``."""
    side = int(round(tokens.shape[1] ** 0.5))
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def reference_tokens(
    features: Features,
    images: Sequence[Image.Image],
    *,
    input_size: int,
    n_refs: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_refs`` patch tokens drawn at random from the un-augmented ``images`` (resized to
    ``input_size``²), and the index of the image each came from, ``((n, D), (n,))``."""
    batch = torch.stack([
        to_normalised_tensor(im.convert("RGB").resize((input_size, input_size),
                                                      Image.Resampling.BILINEAR))
        for im in images
    ])  # fmt: skip
    tokens = features(batch).float()  # (I, N, D)
    flat = tokens.flatten(0, 1)
    owner = torch.arange(tokens.shape[0]).repeat_interleave(tokens.shape[1])
    if n_refs > len(flat):
        raise ValueError(f"reference_tokens: n_refs={n_refs} > {len(flat)} available tokens")
    pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:n_refs]
    return flat[pick], owner[pick]


def cross_view_consistency(
    features: Features,
    images: Sequence[Image.Image],
    references: torch.Tensor,
    *,
    crops: CropConfig,
    photometric: PhotometricParams,
    patch_size: int,
    roi_k: int,
    k: int,
    seed: int,
    reference_owner: torch.Tensor | None = None,
    image_ids: Sequence[int] | None = None,
) -> ConsistencyResult:
    """Mean top-k reference-neighbour overlap of aligned patches of two views per image.

    Args:
        features: frozen extractor, ``(B, 3, S, S) -> (B, (S/p)**2, D)``.
        images: query images (RGB).
        references: ``(n, D)`` reference tokens (:func:`reference_tokens`), from other images.
        crops: view geometry; the two global crops (``global_size`` set) are used.
        photometric: per-view photometric strengths (NeCo's augmentation).
        patch_size: p (boxes are divided by it: token units).
        roi_k: ROI-Align grid side (k x k aligned pairs per image).
        k: neighbours compared.
        seed: crop and photometric seed (same seed, same views for every backbone).
        reference_owner: ``(n,)`` image ids of the references; with ``image_ids`` the
            references of the query's own image are dropped for that image.
        image_ids: ids of ``images`` in the ``reference_owner`` numbering.

    Returns:
        The :class:`ConsistencyResult`.
    """
    if crops.global_size is None or crops.num_global < 2:
        raise ValueError("cross_view_consistency: needs two global crops with global_size set")
    size = crops.global_size
    two = CropConfig(
        num_global=2, num_local=0, global_scale=crops.global_scale, local_scale=crops.local_scale,
        ratio=crops.ratio, min_intersection=crops.min_intersection,
        second_global_factor=crops.second_global_factor, max_retries=crops.max_retries,
        global_size=size, local_size=crops.local_size,
    )  # fmt: skip
    per_image: list[float] = []
    scores: list[torch.Tensor] = []
    for i, img in enumerate(images):
        img = img.convert("RGB")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, i])))
        rects = sample_views(rng, width=img.width, height=img.height, cfg=two, image_id=str(i),
                             epoch=0)  # fmt: skip
        sizes = np.array([size, size])
        views = make_views(img, rects, sizes, params=photometric, seed=seed, epoch=0, index=i)
        gc, all_ = overlap_boxes(rects, sizes, 2)
        maps = [_tokens_as_map(t.unsqueeze(0)) for t in features(torch.stack(views)).float()]
        f_s, f_t = align_pairs(
            student_maps=maps, teacher_maps=maps[:1],
            boxes_teacher=torch.from_numpy(gc[:1]).float().unsqueeze(0) / patch_size,
            boxes_student=torch.from_numpy(all_[:, :1]).float().unsqueeze(0) / patch_size,
            crops_for_assign=[0], roi_k=roi_k,
        )  # fmt: skip  # pair (0, 1): view 0 (f_t) vs view 1 (f_s), (1, 1, k*k, D)
        refs = references
        if reference_owner is not None and image_ids is not None:
            refs = references[reference_owner != image_ids[i]]
        c = topk_overlap(f_t[0, 0], f_s[0, 0], refs, k=k)
        scores.append(c)
        per_image.append(float(c.mean()))
    allc = torch.cat(scores)
    return ConsistencyResult(
        mean=float(allc.mean()),
        std_over_images=float(np.std(per_image)),
        chance=k / int(references.shape[0]),
        k=k,
        n_refs=int(references.shape[0]),
        n_pairs=int(allc.numel()),
    )


def neighbour_label_agreement(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    references: torch.Tensor,
    reference_labels: torch.Tensor,
    *,
    k: int,
) -> dict[str, float]:
    """Which patches end up as neighbours: the fraction of a query patch's top-k cosine
    reference neighbours that carry the query's label (labels only read, never trained on).

    Args:
        queries: ``(N, D)`` patch tokens; ``query_labels`` ``(N,)`` their (majority) labels,
            negative = ignored.
        references: ``(n, D)``; ``reference_labels`` ``(n,)``, negative = ignored.
        k: neighbours per query.

    Returns:
        ``agreement`` (mean over kept queries), ``foreground`` (the same over queries whose label
        is not 0), and ``chance`` (the label-frequency-weighted agreement of random neighbours).
    """
    keep_q = query_labels >= 0
    keep_r = reference_labels >= 0
    q, ql = queries[keep_q].float(), query_labels[keep_q]
    r, rl = references[keep_r].float(), reference_labels[keep_r]
    if not 1 <= k <= len(r):
        raise ValueError(f"neighbour_label_agreement: k={k} must be in [1, {len(r)}]")
    sims = F.normalize(q, dim=-1) @ F.normalize(r, dim=-1).t()
    top = sims.topk(k, dim=1).indices
    same = (rl[top] == ql.unsqueeze(1)).float().mean(1)
    freq = torch.bincount(rl, minlength=int(max(int(rl.max()), int(ql.max())) + 1)).float()
    freq = freq / freq.sum()
    fg = ql != 0
    return {
        "agreement": float(same.mean()),
        "foreground": float(same[fg].mean()) if bool(fg.any()) else float("nan"),
        "chance": float(freq[ql].mean()),
    }
