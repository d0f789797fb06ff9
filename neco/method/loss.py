"""The NeCo patch-neighbour consistency loss (method.md §6, §7, §9).

For every pair (g, v) of teacher crop and student crop, each of the ``M = k*k`` aligned query
patches ranks the same n reference patches by similarity; a differentiable sorting network
turns the ranking into a soft permutation matrix. The student's matrices P are trained to match
the teacher's Q with a cross-entropy over the rank each reference receives::

    l(g, v) = -1/(B*M*n) * sum_{b,q,r} sum_k Q[b,q,r,k] * log P[b,q,r,k]
    L       = mean over the pairs (g, v)            # 10 pairs officially

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).
Sorting networks: https://arxiv.org/abs/2105.04019, https://arxiv.org/abs/2203.09630.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from neco.config.method import LossConfig, LossImplementation, Similarity
from neco.method.fused_loss import rank_cross_entropy
from neco.method.precision import no_tf32
from neco.method.references import ReferenceQueue, inbatch_references, select_push_tokens
from neco.method.roi import align_pairs, pair_order
from neco.method.sorting import soft_sort

__all__ = [
    "LossConfig",
    "LossImplementation",
    "Similarity",
    "loss_from_maps",
    "neco_loss",
    "similarities",
    "validate_loss_config",
]

_KEY = "train.loss"


def validate_loss_config(cfg: LossConfig, batch_size: int) -> None:
    """Reject loss settings that cannot run, naming the ``params.yaml`` keys (§6, §16 #5).

    Args:
        cfg: the loss section.
        batch_size: per-device batch size B.

    Raises:
        ValueError: naming the offending keys, their values and what was expected.
    """

    def bad(msg: str) -> ValueError:
        return ValueError(f"{msg} (method.md §6, §9, §15)")

    if batch_size < 1:
        raise bad(f"train.batch_size = {batch_size}: expected >= 1 (per device)")
    if cfg.roi_k < 1:
        raise bad(f"{_KEY}.roi_k = {cfg.roi_k}: expected an integer >= 1")
    if cfg.n_refs < 2:
        raise bad(f"{_KEY}.n_refs = {cfg.n_refs}: expected an integer >= 2")
    if not cfg.steepness_student > 0:
        raise bad(f"{_KEY}.steepness_student = {cfg.steepness_student}: expected > 0")
    if cfg.steepness_teacher is not None and not cfg.steepness_teacher > 0:
        raise bad(f"{_KEY}.steepness_teacher = {cfg.steepness_teacher}: expected > 0 or null")
    if not isinstance(cfg.implementation, LossImplementation):
        raise bad(
            f"{_KEY}.implementation = {cfg.implementation!r}: expected one of "
            f"{[i.value for i in LossImplementation]}"
        )
    if not 0 <= cfg.log_eps < 1:
        raise bad(f"{_KEY}.log_eps = {cfg.log_eps}: expected 0 (plain log) or in (0, 1)")
    if cfg.art_lambda < 0:
        raise bad(f"{_KEY}.art_lambda = {cfg.art_lambda}: expected >= 0")
    cfa = list(cfg.crops_for_assign)
    if not cfa or len(set(cfa)) != len(cfa) or min(cfa) < 0:
        raise bad(f"{_KEY}.crops_for_assign = {cfa}: expected distinct crop indices >= 0")
    if cfg.queue:
        length, push = cfg.queue_length, cfg.queue_push_per_image
        if length is None or push is None or length < 1 or push < 1:
            raise bad(
                f"{_KEY}.queue_length = {cfg.queue_length}, {_KEY}.queue_push_per_image = "
                f"{cfg.queue_push_per_image}: expected both >= 1 in queue mode"
            )
        if batch_size * cfg.n_refs > length:
            raise bad(
                f"{_KEY}.n_refs = {cfg.n_refs} times train.batch_size = {batch_size} (per device)"
                f" = {batch_size * cfg.n_refs} references exceed {_KEY}.queue_length = "
                f"{cfg.queue_length}; lower the batch size or n_refs, or raise queue_length"
            )


@contextlib.contextmanager
def _strict_fp32(device_type: str) -> Iterator[None]:
    """Autocast off and full-precision fp32 (:func:`no_tf32`) inside the block (D3)."""
    with no_tf32(), torch.autocast(device_type=device_type, enabled=False):
        yield


def _common_fp32(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Cast to the promoted dtype, at least float32 (half precision is upcast)."""
    dtype = torch.promote_types(torch.float32, xs[0].dtype)
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return [x.to(dtype) for x in xs]


def similarities(f: torch.Tensor, r: torch.Tensor, kind: Similarity) -> torch.Tensor:
    """Query-reference similarities fed to the sort (method.md §7).

    Computed in (at least) float32 with TF32 and autocast disabled (D3); float64 stays float64.

    Args:
        f: ``(B, Q, d)`` aligned query features (not unit-norm after ROI-Align).
        r: ``(B, n, d)`` references.
        kind: cosine (both sides re-normalised) or euclidean (``cdist`` on un-normalised
            features, exact non-matmul path).

    Returns:
        ``(B, Q, n)``.
    """
    with _strict_fp32(f.device.type):
        f, r = _common_fp32(f, r)
        if kind is Similarity.COSINE:
            return torch.bmm(F.normalize(f, dim=-1), F.normalize(r, dim=-1).transpose(1, 2))
        if kind is Similarity.EUCLIDEAN:
            return torch.cdist(f, r, compute_mode="donot_use_mm_for_euclid_dist")
    raise ValueError(
        f"{_KEY}.similarity = {kind!r}: expected one of {[s.value for s in Similarity]}"
    )


def neco_loss(
    f_s: torch.Tensor, f_t: torch.Tensor, refs: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy between teacher and student soft permutation matrices (method.md §9).

    ``implementation = exact``: all pairs go through **one** student ``soft_sort`` call (with
    grad, ``steepness_student``) and one teacher call under ``no_grad`` (``steepness_teacher``,
    or the student's when None), each over ``pairs*B*M`` rows of length n, and P, Q of all
    queries are materialised. ``implementation = fused``: the same rows go through
    :func:`neco.method.fused_loss.rank_cross_entropy`, which sorts, takes the cross-entropy and
    its gradient query by query (same numbers to rounding, O(rows * n) memory).

    ``use_teacher = False`` (ablation): ``f_t`` holds the aligned global-crop features of a
    second **student** forward instead of the teacher's (``loss_from_maps``); Q is sorted from
    them without grad, as with a teacher, so the target is a real cross-view one.

    Args:
        f_s: ``(pairs, B, M, d)`` aligned student features.
        f_t: ``(pairs, B, M, d)`` aligned target features of the global crop of each pair
            (teacher, or the second student forward when ``cfg.use_teacher`` is False); Q is
            computed from them without grad.
        refs: ``(pairs, B, n, d)`` references of each pair, shared by student and teacher.
        cfg: loss settings (similarity, sorter, steepness, log_eps, use_teacher).

    Returns:
        ``(loss, stats)``: the scalar mean over pairs, and detached diagnostics:
        ``pair_loss (pairs,)``, ``teacher_entropy`` (the loss's lower bound H(Q), reached at
        P = Q), ``p_min`` (smallest student P entry), ``p_rowmax`` and ``q_rowmax`` (mean max
        of a row of P / Q: sharpness of the soft ranks).

    Raises:
        FloatingPointError: the loss is not finite (e.g. P underflowed to 0 with log_eps = 0).
    """
    if f_s.ndim != 4 or refs.ndim != 4 or refs.shape[:2] != f_s.shape[:2]:
        raise ValueError(
            f"neco_loss: expected f_s (pairs, B, M, d) and refs (pairs, B, n, d), got "
            f"{tuple(f_s.shape)} and {tuple(refs.shape)}"
        )
    pairs, batch, m, _ = f_s.shape
    n = refs.shape[2]
    if n != cfg.n_refs:
        raise ValueError(f"neco_loss: refs carry n = {n} references, {_KEY}.n_refs = {cfg.n_refs}")
    beta_t = cfg.steepness_student if cfg.steepness_teacher is None else cfg.steepness_teacher
    flat_refs = refs.flatten(0, 1)
    if f_t.shape != f_s.shape:
        raise ValueError(
            f"neco_loss: f_t must match f_s {tuple(f_s.shape)}, got {tuple(f_t.shape)}"
        )

    def sims(f: torch.Tensor) -> torch.Tensor:  # (pairs*B*M, n)
        return similarities(f.flatten(0, 1), flat_refs, cfg.similarity).reshape(-1, n)

    if cfg.implementation is LossImplementation.FUSED:
        s_s = sims(f_s)
        with torch.no_grad():
            s_t = sims(f_t.detach())
        return _fused_loss(s_s, s_t, cfg, beta_t, pairs)

    def sort(s: torch.Tensor, steepness: float) -> torch.Tensor:
        with _strict_fp32(s.device.type):
            _, perm = soft_sort(
                s,
                network=cfg.sort_network,
                steepness=steepness,
                distribution=cfg.sort_distribution,
                art_lambda=cfg.art_lambda,
            )
        return perm  # (pairs*B*M, n_ref, n_rank)

    p = sort(sims(f_s), cfg.steepness_student)
    with torch.no_grad():
        q = sort(sims(f_t.detach()), beta_t)
    log_p = torch.log(p.clamp_min(cfg.log_eps)) if cfg.log_eps > 0 else torch.log(p)
    pair_loss = -(q * log_p).sum(-1).reshape(pairs, batch * m * n).mean(-1)
    loss = pair_loss.mean()
    _check_finite(loss, pair_loss, p.detach().min())
    with torch.no_grad():
        stats = {
            "pair_loss": pair_loss.detach(),
            "teacher_entropy": -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean(),
            "p_min": p.detach().min(),
            "p_rowmax": p.detach().amax(-1).mean(),
            "q_rowmax": q.amax(-1).mean(),
        }
    return loss, stats


def _fused_loss(
    s_s: torch.Tensor, s_t: torch.Tensor, cfg: LossConfig, beta_t: float, pairs: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``implementation = fused``: the loss and stats of :func:`neco_loss` from per-query CE."""
    rows, n = s_s.shape
    with _strict_fp32(s_s.device.type):
        ce, per_query = rank_cross_entropy(
            s_s,
            s_t,
            network=cfg.sort_network,
            distribution=cfg.sort_distribution,
            steepness_student=cfg.steepness_student,
            steepness_teacher=beta_t,
            art_lambda=cfg.art_lambda,
            log_eps=cfg.log_eps,
        )
    pair_loss = ce.reshape(pairs, rows // pairs).sum(-1) / (rows // pairs * n)
    loss = pair_loss.mean()
    p_min = per_query["p_min"].min()
    _check_finite(loss, pair_loss, p_min)
    stats = {
        "pair_loss": pair_loss.detach(),
        "teacher_entropy": per_query["entropy"].sum() / (rows * n),
        "p_min": p_min,
        "p_rowmax": per_query["p_rowmax_sum"].sum() / (rows * n),
        "q_rowmax": per_query["q_rowmax_sum"].sum() / (rows * n),
    }
    return loss, stats


def _check_finite(loss: torch.Tensor, pair_loss: torch.Tensor, p_min: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"NeCo loss is {loss.item()} (per pair {pair_loss.detach().tolist()}); smallest student"
            f" P = {p_min.item():.3e}. P underflows with steep or light-tailed sorts "
            f"(e.g. logistic at beta = 100): use {_KEY}.sort_distribution = cauchy or set "
            f"{_KEY}.log_eps > 0 (method.md §9, §14.4)"
        )


def loss_from_maps(
    *,
    student_maps: Sequence[torch.Tensor],
    teacher_maps: Sequence[torch.Tensor],
    boxes_teacher: torch.Tensor,
    boxes_student: torch.Tensor,
    cfg: LossConfig,
    queue: ReferenceQueue | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Maps + boxes + reference source -> loss: everything the Lightning step needs (§5-§9).

    Steps: ROI-Align all pairs (:func:`neco.method.roi.align_pairs`); in queue mode push
    ``min(queue_push_per_image*B, queue_length)`` random un-aligned teacher patches of each
    assigned crop into its bank **before** sampling (so the current batch is included, as
    officially), then sample per pair from bank a(g); otherwise draw in-batch references per
    pair from its aligned teacher patches; finally :func:`neco_loss`.

    With ``use_teacher = False`` pass the maps of a second student forward of the global crops
    as ``teacher_maps`` (official ablation): Q comes from them without grad, queue pushes are
    detached, and in-batch references keep their gradient, as in the official code (there the
    target forward is not under ``no_grad``; only Q is).

    Args:
        student_maps: per crop c = 0..C-1, ``(B, d, h_c, w_c)`` unit-norm head outputs.
        teacher_maps: per assigned crop (``crops_for_assign`` order), ``(B, d, G, G)``.
        boxes_teacher: ``(B, A, C, 4)`` token-unit overlap boxes in the teacher crop frames.
        boxes_student: ``(B, C, A, 4)`` the same boxes in the student crop frames.
        cfg: loss settings.
        queue: the reference queue (banks in ``crops_for_assign`` order) when ``cfg.queue``;
            must be None otherwise.
        generator: CPU generator for the push/sample/in-batch permutations.

    Returns:
        As :func:`neco_loss`.
    """
    cfa = list(cfg.crops_for_assign)
    f_s, f_t = align_pairs(
        student_maps=student_maps,
        teacher_maps=[t.detach() for t in teacher_maps] if cfg.use_teacher else list(teacher_maps),
        boxes_teacher=boxes_teacher,
        boxes_student=boxes_student,
        crops_for_assign=cfa,
        roi_k=cfg.roi_k,
    )
    pairs = pair_order(cfa, len(student_maps))
    batch = f_s.shape[1]
    if cfg.queue:
        if queue is None or queue.num_banks != len(cfa):
            raise ValueError(
                f"loss_from_maps: {_KEY}.queue is true; expected a ReferenceQueue with "
                f"{len(cfa)} banks, got {queue if queue is None else queue.num_banks}"
            )
        per_image = cfg.queue_push_per_image
        if per_image is None:
            raise ValueError(
                f"loss_from_maps: {_KEY}.queue_push_per_image is null; resolve it from the "
                "backbone recipe first (neco.train.module.effective_loss_config)"
            )
        for a, t in enumerate(teacher_maps):
            queue.push(
                a,
                select_push_tokens(
                    t,
                    per_image=per_image,
                    queue_length=queue.queue_length,
                    generator=generator,
                ),
            )
        refs = [
            queue.sample(cfa.index(g), batch_size=batch, n=cfg.n_refs, generator=generator)
            for g, _ in pairs
        ]
    else:
        if queue is not None:
            raise ValueError(
                f"loss_from_maps: {_KEY}.queue is false but a ReferenceQueue was given"
            )
        refs = [
            inbatch_references(f_t[i], n=cfg.n_refs, generator=generator) for i in range(len(pairs))
        ]
    return neco_loss(f_s, f_t, torch.stack(refs), cfg)
