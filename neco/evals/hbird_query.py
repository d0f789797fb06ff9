"""Hummingbird query side: label transfer from the k nearest keys and streaming scoring (§4.4).

For every query patch: L2-normalise, search the k nearest memory keys by inner product, weight
their soft labels with ``softmax(sim / τ)``; per image reshape to ``(C, s, s)``, bilinearly
upsample to ``S × S`` (``align_corners=False``), take the argmax and add the image's pixels to
one dataset-level confusion. Predictions are never stored (except a few for figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neco.config.evals import MaskResize
from neco.data.types import SegDataset
from neco.evals.extract import check_sample
from neco.evals.knn import KnnIndex, exact_topk_torch, recall_at_k
from neco.evals.metrics import confusion_matrix
from neco.evals.transforms import as_tensor, torch_resize_mask


@dataclass(frozen=True)
class QueryMask:
    """Query GT: torch ``nearest`` from the original mask to S² (§4.1)."""

    ds: SegDataset
    input_size: int

    def __call__(self, index: int) -> torch.Tensor:
        sample = self.ds[index]
        check_sample(sample.image, sample.mask, sample.id)
        return torch_resize_mask(as_tensor(sample.mask), self.input_size, MaskResize.nearest)


def transfer_labels(
    sims: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft prediction ``Σ_i softmax(sim/τ)_i · y_i`` of each query, float32 ``(Q, C)``.

    Args:
        sims: ``(Q, k)`` inner products of unit vectors.
        rows: int64 ``(Q, k)`` neighbour rows of ``labels``.
        labels: ``(R, C)`` float32 soft labels or integer pixel counts (normalised here).
        temperature: τ.
    """
    weights = torch.softmax(sims.float() / temperature, dim=1)
    y = labels[rows]
    if not y.is_floating_point():
        y = y.float() / y.sum(-1, keepdim=True).float()
    return torch.bmm(weights.unsqueeze(1), y).squeeze(1)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (no epsilon, as the reference)."""
    out: torch.Tensor = x / x.norm(dim=-1, keepdim=True)
    return out


def score_queries(
    index: KnnIndex,
    labels: torch.Tensor,
    query_features: torch.Tensor,
    gt: torch.Tensor,
    *,
    k: int,
    temperature: float,
    batch_size: int,
    ignore_index: int,
    device: torch.device,
    n_keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset-level confusion of the label-transfer predictions.

    Args:
        index: search index over the memory keys.
        labels: ``(R, C)`` memory labels, rows aligned with the index.
        query_features: float32 ``(N_q, s*s, D)`` query tokens.
        gt: uint8 ``(N_q, S, S)`` query GT.
        k: neighbours.
        temperature: softmax τ.
        batch_size: query images per block.
        ignore_index: ι of the GT.
        device: where transfer, upsampling and counting run.
        n_keep: return the predictions of the first ``n_keep`` images (figures).

    Returns:
        int64 ``(C, C)`` confusion (CPU) and int64 ``(n_keep, S, S)`` predictions.
    """
    num_classes, size = labels.shape[1], gt.shape[-1]
    grid = int(round(query_features.shape[1] ** 0.5))
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    kept = []
    for b0 in range(0, query_features.shape[0], batch_size):
        q = query_features[b0 : b0 + batch_size].to(device)
        n = q.shape[0]
        sims, rows = index.search(unit_rows(q.reshape(-1, q.shape[-1])), k)
        soft = transfer_labels(sims.to(device), rows.to(device), labels, temperature)
        soft = soft.view(n, grid, grid, num_classes).permute(0, 3, 1, 2)
        up = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False)
        pred = up.argmax(1)
        conf += confusion_matrix(
            gt[b0 : b0 + n].to(device),
            pred,
            num_classes=num_classes,
            num_pred=num_classes,
            ignore_index=ignore_index,
        )
        if b0 < n_keep:
            kept.append(pred[: n_keep - b0].cpu())
    preds = torch.cat(kept) if kept else torch.empty(0, size, size, dtype=torch.long)
    return conf.cpu(), preds


def search_recall(
    index: KnnIndex,
    keys: torch.Tensor,
    query_features: torch.Tensor,
    *,
    k: int,
    samples: int,
    generator: torch.Generator,
    query_chunk: int,
    key_chunk: int,
) -> float:
    """recall@k of ``index`` against exact search on ``samples`` uniformly drawn query patches
    (evaluation.md §4.7)."""
    flat = query_features.reshape(-1, query_features.shape[-1])
    pick = torch.randperm(flat.shape[0], generator=generator)[:samples]
    q = unit_rows(flat[pick].to(keys.device))
    approx = index.search(q, k)[1]
    exact = exact_topk_torch(q, keys, k, query_chunk=query_chunk, key_chunk=key_chunk)[1]
    return recall_at_k(approx, exact)
