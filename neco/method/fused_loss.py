"""Fused NeCo rank cross-entropy: teacher sort, student sort, CE and backward per query (D4).

For each query row (similarities to its n references) the NeCo loss needs the teacher's soft
permutation matrix Q (no grad), the student's P and ``ce = -sum_{r,k} Q[r,k] log P[r,k]``
(method.md §8, §9). The exact path (:func:`neco.method.sorting.soft_sort`) materialises P and Q
of all ``R = pairs*B*M`` queries at once and keeps ~85 KB per query for backward at n = 49
(2.7 GB per paper step). Here each query is handled on its own, in a working buffer that is
reused for the next one, and the gradient ``d ce / d s_student`` (an n-vector: the Jacobian of a
scalar) is computed in the same pass, so autograd keeps only ``(R, n)`` and no sort is re-run in
backward (method.md §14.3 "fused per-query kernel"). Backends, all numerically equal to the
exact path and to ``diffsort`` (tests/test_fused_loss.py, tests/test_fused_triton.py):

* ``cpu``: a C kernel compiled on first use (:mod:`neco.method.fused_cpu`), the CPU default;
* ``triton``: one Triton program per query (:mod:`neco.method.fused_triton`), the CUDA default;
* ``torch``: chunks of queries through the exact sort with the gradient taken per chunk: the
  portable fallback (no compiler, no Triton, other devices), memory bounded by the chunk.

Paper: https://arxiv.org/abs/2408.11054 (code https://github.com/vpariza/NeCo); sorting networks:
https://arxiv.org/abs/2105.04019, https://arxiv.org/abs/2203.09630.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from neco.config.method import SortDistribution, SortNetwork
from neco.method.fused_cpu import STAT_COLUMNS, cpu_kernel_available, cpu_kernel_error, rank_ce_cpu
from neco.method.sorting import soft_sort
from neco.method.sorting_networks import build_network

__all__ = ["STAT_COLUMNS", "Backend", "rank_cross_entropy", "resolve_backend"]

Backend = Literal["auto", "cpu", "triton", "torch"]
_Runner = Callable[[bool], tuple[Tensor, Tensor | None]]
_CHUNK_BYTES = 256 * 2**20  # working memory per chunk of the torch backend


def resolve_backend(device: torch.device, n: int, backend: Backend = "auto") -> Backend:
    """The backend :func:`rank_cross_entropy` uses for rows of length ``n`` on ``device``.

    ``auto`` picks ``triton`` on CUDA (if importable and ``n`` fits its tiles), ``cpu`` on the
    CPU (if the kernel compiles), else ``torch`` with a one-time warning saying why. An
    explicit ``triton`` also runs CPU tensors under ``TRITON_INTERPRET=1`` (the tests).

    Raises:
        ValueError: an explicit backend that cannot run here (the message says why).
    """
    if backend == "torch":
        return backend
    interpret = backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if backend in ("auto", "triton") and (device.type == "cuda" or interpret):
        from neco.method import fused_triton  # imports triton only when a GPU asks for it

        why = fused_triton.unsupported_reason(n)
        if not why:
            return "triton"
        if backend == "triton":
            raise ValueError(f"train.loss.implementation = fused, backend triton: {why}")
        _warn_once(f"fused NeCo loss: Triton backend unavailable ({why}); using the torch path")
        return "torch"
    if backend in ("auto", "cpu") and device.type == "cpu":
        if cpu_kernel_available():
            return "cpu"
        if backend == "cpu":
            raise ValueError(f"train.loss.implementation = fused, backend cpu: "
                             f"{cpu_kernel_error()}")
        _warn_once(f"fused NeCo loss: CPU kernel unavailable ({cpu_kernel_error()}); "
                   f"using the slower chunked torch path")
        return "torch"
    if backend == "auto":
        return "torch"
    raise ValueError(f"fused NeCo loss: backend {backend!r} cannot run on {device.type}; "
                     f"expected one of auto, torch{', cpu' if device.type == 'cpu' else ''}"
                     f"{', triton' if device.type == 'cuda' else ''}")


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _rank_ce_torch(
    s_student: Tensor, s_teacher: Tensor, *, network: SortNetwork,
    distribution: SortDistribution, steepness_student: float, steepness_teacher: float,
    art_lambda: float, log_eps: float, want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Torch backend: the exact sort on chunks of queries, gradient per chunk (same outputs)."""
    rows, n = s_student.shape
    plan = build_network(network, n)
    per_row = s_student.element_size() * (
        1.5 * len(plan.layers) * plan.num_wires * n + 6 * n * n)
    chunk = max(1, int(_CHUNK_BYTES // per_row))
    stats = s_student.new_empty(rows, len(STAT_COLUMNS))
    grad = torch.empty_like(s_student) if want_grad else None
    kw: dict[str, Any] = dict(network=network, distribution=distribution, art_lambda=art_lambda)
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        with torch.no_grad():
            _, q = soft_sort(s_teacher[part], steepness=steepness_teacher, **kw)
        x = s_student[part].detach().requires_grad_(want_grad)
        # The chunk's graph is freed before the next chunk: it is not part of the caller's graph,
        # so the caller's saved-tensor hooks (offloading, memory accounting) must not see it.
        with torch.enable_grad() if want_grad else contextlib.nullcontext(), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            _, p = soft_sort(x, steepness=steepness_student, **kw)
            log_p = torch.log(p.clamp_min(log_eps)) if log_eps > 0 else torch.log(p)
            ce = -(q * log_p).sum((1, 2))
            if grad is not None:
                (grad[part],) = torch.autograd.grad(ce.sum(), x)
        with torch.no_grad():
            p = p.detach()
            stats[part] = torch.stack([
                ce.detach(), -(q * torch.log(q.clamp_min(1e-30))).sum((1, 2)), p.amin((1, 2)),
                p.amax(2).sum(1), q.amax(2).sum(1)], dim=1)
    return stats, grad


class _RankCE(torch.autograd.Function):
    """Keeps only the per-query gradient rows; backward scales them by the upstream gradient."""

    @staticmethod
    def forward(ctx: Any, s_student: Tensor, s_teacher: Tensor, run: _Runner,
                ) -> tuple[Tensor, Tensor]:
        stats, grad = run(bool(ctx.needs_input_grad[0]))
        ctx.save_for_backward(grad)
        ce, rest = stats[:, 0].contiguous(), stats[:, 1:].contiguous()
        ctx.mark_non_differentiable(rest)
        return ce, rest

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_ce: Tensor | None, _g_rest: Tensor | None) -> Any:
        (grad,) = ctx.saved_tensors
        if g_ce is None or grad is None:
            return None, None, None
        return g_ce.unsqueeze(1) * grad, None, None


_TRITON_CHECKED: set[tuple[Any, ...]] = set()
_CHECK_ROWS = 64


def _self_check_triton(ss: Tensor, st: Tensor, kw: dict[str, Any]) -> None:
    """Once per process and setting: the Triton kernel against the exact sort on a few rows.

    The kernel is tested under Triton's interpreter only; a compiled kernel that disagrees on a
    real GPU (a compiler or hardware difference) must stop the run, not train on wrong
    gradients. Costs one small exact sort per setting.

    Raises:
        RuntimeError: loss or gradient differ by more than 1e-4 relative, naming the way out.
    """
    key = (ss.device, ss.dtype, ss.shape[1], *sorted(kw.items()))
    if key in _TRITON_CHECKED:
        return
    from neco.method.fused_triton import rank_ce_triton

    a, b = ss[:_CHECK_ROWS].contiguous(), st[:_CHECK_ROWS].contiguous()
    got, got_grad = rank_ce_triton(a, b, want_grad=True, **kw)
    want, want_grad = _rank_ce_torch(a, b, want_grad=True, **kw)
    assert got_grad is not None and want_grad is not None
    for name, x, y in (("loss", got[:, 0], want[:, 0]), ("gradient", got_grad, want_grad)):
        err = float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))
        if not math.isfinite(err) or err > 1e-4:
            raise RuntimeError(
                f"fused NeCo loss: the Triton kernel's {name} differs from the exact sort by "
                f"{err:.2e} relative on {ss.device} (n = {ss.shape[1]}); set "
                f"train.loss.implementation=exact and report this GPU and Triton version")
    _TRITON_CHECKED.add(key)


def rank_cross_entropy(
    s_student: Tensor, s_teacher: Tensor, *, network: SortNetwork | str,
    distribution: SortDistribution | str, steepness_student: float, steepness_teacher: float,
    art_lambda: float, log_eps: float, backend: Backend = "auto",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-query NeCo cross-entropy between the teacher's and the student's soft ranks (§9).

    Equal (to rounding) to ``-(Q * log P).sum((1, 2))`` with ``P = soft_sort(s_student)[1]``
    and ``Q = soft_sort(s_teacher)[1]`` under no_grad (:func:`neco.method.sorting.soft_sort`,
    diffsort's convention ``P[r, k]``: reference r at ascending rank k), without materialising
    P or Q of more than one query (module docstring). Runs in float32 (float64 if either input
    is float64) with autocast off (D3); gradients flow to ``s_student`` only, once
    differentiable.

    Args:
        s_student: ``(R, n)`` student similarities of each query to its references.
        s_teacher: ``(R, n)`` teacher similarities (no gradient flows to them).
        network: ``bitonic`` or ``odd_even``.
        distribution: comparator relaxation F (method.md §8).
        steepness_student: beta_s > 0.
        steepness_teacher: beta_t > 0.
        art_lambda: exponent of ``logistic_phi``; unused otherwise.
        log_eps: 0 = plain ``log P``; > 0 = ``log(max(P, log_eps))`` (method.md §9).
        backend: ``auto`` (see :func:`resolve_backend`), ``cpu``, ``triton`` or ``torch``.

    Returns:
        ``(ce, stats)``: ``ce`` ``(R,)`` is ``sum_{r,k} -Q log P`` per query; ``stats`` holds
        detached ``(R,)`` tensors ``entropy`` (``sum_{r,k} -Q log Q``), ``p_min`` (smallest P
        entry), ``p_rowmax_sum`` and ``q_rowmax_sum`` (sums over references of the row max).

    Raises:
        ValueError: malformed inputs or settings, or an explicit backend that cannot run.
        FloatingPointError: an input holds NaN or inf.
    """
    net, dist = SortNetwork(network), SortDistribution(distribution)
    for name, t in (("s_student", s_student), ("s_teacher", s_teacher)):
        if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"rank_cross_entropy: {name} must be a floating (R, n) tensor, "
                             f"got {got}")
    if s_student.shape != s_teacher.shape or s_student.device != s_teacher.device:
        raise ValueError(f"rank_cross_entropy: s_student {tuple(s_student.shape)} on "
                         f"{s_student.device} and s_teacher {tuple(s_teacher.shape)} on "
                         f"{s_teacher.device} must match")
    for name, beta in (("steepness_student", steepness_student),
                       ("steepness_teacher", steepness_teacher)):
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"rank_cross_entropy: {name} = {beta!r}, expected a finite value > 0")
    if not (math.isfinite(art_lambda) and 0 <= log_eps < 1):
        raise ValueError(f"rank_cross_entropy: art_lambda = {art_lambda!r}, log_eps = "
                         f"{log_eps!r}: expected a finite art_lambda and 0 <= log_eps < 1")
    for name, t in (("s_student", s_student), ("s_teacher", s_teacher)):
        finite = torch.isfinite(t.detach())
        if not bool(finite.all()):
            bad = (~finite).nonzero()
            raise FloatingPointError(
                f"rank_cross_entropy: {name} has {bad.shape[0]} non-finite value(s) (first at "
                f"row {int(bad[0, 0])}, column {int(bad[0, 1])}); the similarities are already "
                f"NaN/inf, so the backbone or head diverged upstream (e.g. a too-high learning "
                f"rate or fp16 overflow)")
    rows, n = s_student.shape
    compute = torch.promote_types(torch.promote_types(s_student.dtype, s_teacher.dtype),
                                  torch.float32)
    if compute != torch.float64:
        compute = torch.float32
    chosen = resolve_backend(s_student.device, n, backend)
    kw: dict[str, Any] = dict(
        network=net, distribution=dist, steepness_student=float(steepness_student),
        steepness_teacher=float(steepness_teacher), art_lambda=float(art_lambda),
        log_eps=float(log_eps))
    with torch.autocast(device_type=s_student.device.type, enabled=False):
        ss = s_student.to(compute).contiguous()
        st = s_teacher.detach().to(compute).contiguous()
        if chosen == "cpu":
            impl: Callable[..., tuple[Tensor, Tensor | None]] = rank_ce_cpu
        elif chosen == "triton":
            from neco.method.fused_triton import rank_ce_triton

            impl = rank_ce_triton
        else:
            impl = _rank_ce_torch

        def run(want_grad: bool) -> tuple[Tensor, Tensor | None]:
            return impl(ss.detach(), st, want_grad=want_grad, **kw)

        if chosen == "triton" and rows:
            _self_check_triton(ss.detach(), st, kw)

        if rows == 0:
            ce, rest = ss.new_zeros(0), ss.new_zeros(0, len(STAT_COLUMNS) - 1)
        elif torch.is_grad_enabled() and ss.requires_grad:
            ce, rest = _RankCE.apply(ss, st, run)
        else:
            stats, _ = run(False)
            ce, rest = stats[:, 0], stats[:, 1:]
    return ce, {name: rest[:, i] for i, name in enumerate(STAT_COLUMNS[1:])}
