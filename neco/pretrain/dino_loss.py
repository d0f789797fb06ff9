"""Self-distillation targets and loss as pure functions (DINO, SwAV/DINOv2 Sinkhorn-Knopp).

* DINO (https://arxiv.org/abs/2104.14294): targets softmax((t - c) / tau_t), the centre c an EMA
  of the teacher's batch-mean logits; centring prevents one prototype from dominating and the
  low teacher temperature (sharpening) prevents the uniform collapse.
* Sinkhorn-Knopp (SwAV https://arxiv.org/abs/2006.09882; DINOv2
  https://arxiv.org/abs/2304.07193 §A): targets are the equipartitioned soft assignment of the
  batch to the K prototypes, so neither collapse is possible within a batch.

Student: log_softmax(s / tau_s); loss: cross-entropy H(targets, student), averaged over rows.
Shapes: logits ``(N, K)``, one row per token (class token of a view, or an aligned patch).
"""

from __future__ import annotations

import math

import torch


def centred_targets(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """DINO targets ``softmax((logits - center) / temp)``, ``(N, K)``; ``center`` is ``(K,)``."""
    return torch.softmax((logits.float() - center) / temp, dim=-1)


def update_center(center: torch.Tensor, logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """The new DINO centre ``m c + (1 - m) mean_n logits[n]``."""
    return momentum * center + (1.0 - momentum) * logits.float().mean(0)


def sinkhorn_targets(logits: torch.Tensor, temp: float, iters: int) -> torch.Tensor:
    """Sinkhorn-Knopp targets ``(N, K)``: rows sum to 1, prototypes share the batch equally.

    Starts from ``exp(logits / temp)`` and alternately normalises prototypes (to 1/K of the
    mass) and rows (to 1/N), ``iters`` times, as DINOv2's ``sinkhorn_knopp_teacher``.
    Computed in the log domain: with sharp temperatures ``exp`` underflows to 0 for whole
    prototypes, and the linear-domain normalisation then divides 0 by 0.
    """
    log_q = logits.float() / temp  # (N, K)
    n, k = log_q.shape
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)
    return torch.exp(log_q + math.log(n))


def distillation_ce(
    targets: torch.Tensor, student_logits: torch.Tensor, temp: float
) -> torch.Tensor:
    """Mean over rows of ``-sum_k targets[n, k] log softmax(student[n] / temp)[k]``."""
    log_p = torch.log_softmax(student_logits.float() / temp, dim=-1)
    return -(targets * log_p).sum(-1).mean()


def info_nce(
    queries: torch.Tensor, keys: torch.Tensor, image: torch.Tensor, temp: float
) -> tuple[torch.Tensor, float]:
    """InfoNCE of unit-norm ``queries`` ``(N, d)`` against ``keys`` ``(N, d)``, row i's positive
    being key i and its negatives every key of another image (``image`` ``(N,)`` ids: keys of
    the query's own image other than the positive are left out of the softmax).

    Returns:
        The mean loss and the top-1 retrieval accuracy of the positive.
    """
    logits = queries.float() @ keys.float().t() / temp
    same = image.view(-1, 1) == image.view(1, -1)
    eye = torch.eye(len(image), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(image), device=logits.device)
    loss = torch.nn.functional.cross_entropy(logits, target)
    acc = float((logits.argmax(1) == target).float().mean())
    return loss, acc


def target_stats(targets: torch.Tensor) -> dict[str, float]:
    """Collapse diagnostics of targets ``(N, K)``, as fractions of ln K.

    ``entropy``: mean per-row entropy (1 = every row uniform: the uniform collapse);
    ``marginal_entropy``: entropy of the batch-mean distribution (0 = every row on the same
    prototype: the one-prototype collapse). Healthy training has low ``entropy`` and high
    ``marginal_entropy``.
    """
    k = targets.shape[-1]
    t = targets.float().clamp_min(1e-12)
    row = -(t * t.log()).sum(-1).mean()
    mean = t.mean(0)
    marginal = -(mean * mean.log()).sum()
    return {
        "entropy": float(row) / math.log(k),
        "marginal_entropy": float(marginal) / math.log(k),
    }
