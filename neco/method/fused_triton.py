"""Fused NeCo rank cross-entropy as a Triton kernel (CUDA; tested on the CPU interpreter; D4).

The GPU counterpart of :mod:`neco.method.fused_cpu` (same outputs, same per-query algorithm;
method.md §14.3 "fused per-query kernel", §14.5). A persistent grid of programs walks the
queries; per query one program

1. runs the teacher's and the student's value paths on a ``(n',)`` vector, layer by layer,
   every comparator as a gather from its partner wire (one table row per layer: the partner,
   +1 on the lower wire / -1 on the upper / 0 on an identity wire, the descending flag), and
   keeps the per-layer coefficients ``c = w_lo - 1`` (and, for the student, ``x_self -
   x_partner`` and ``dc/d delta``) in a small per-program scratch row;
2. builds Q and P for a block of ``RB`` input rows at a time as ``(RB, n')`` register tiles
   (the rows of P are independent given the comparator weights), storing the student's
   per-layer column differences for that block only, takes the cross-entropy and statistics,
   and back-propagates ``-Q/P`` through the block, accumulating ``dCE/dc`` per comparator;
3. back-propagates ``dCE/dc`` through the student's value path to ``d ce / d s``.

Nothing ``n x n`` ever leaves the program but the ``RB x n'`` block history in its own scratch
(L2-resident). Constants are built in the data's dtype (Triton rounds Python float literals to
float32), so float64 runs are accurate to ~1e-15; ``atan`` is Cephes' (float64: rational, 1
ulp; float32: polynomial, <= 3 ulp) because libdevice calls do not run in the interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported to run this on the CPU
(tests/test_fused_triton.py does so in a subprocess).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from neco.config.method import SortDistribution, SortNetwork
from neco.method.sorting_networks import build_network

try:  # optional: the CPU path and the tests run without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None
    tl = None

__all__ = ["MAX_WIRES", "rank_ce_triton", "unsupported_reason"]

MAX_WIRES = 4096  # widest network one program handles (tile RB x n' with RB >= 1)
_TILE = 4096  # elements per (RB, n') register tile
_STATS = 5  # ce, entropy, p_min, p_rowmax_sum, q_rowmax_sum (neco.method.fused_cpu order)
_DIST_CODE = {
    SortDistribution.CAUCHY: 0, SortDistribution.LOGISTIC: 1, SortDistribution.LOGISTIC_PHI: 2,
    SortDistribution.RECIPROCAL: 3, SortDistribution.GAUSSIAN: 4, SortDistribution.OPTIMAL: 5,
}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported_reason(n: int) -> str:
    """Why the Triton kernel cannot sort rows of length ``n`` here ('' if it can)."""
    if triton is None:
        return "triton is not installed"
    if not (torch.cuda.is_available() or _interpreting()):
        return "no CUDA device (and TRITON_INTERPRET is not set)"
    if _next_pow2(n) > MAX_WIRES:
        return f"n = {n} needs {_next_pow2(n)} wires, more than the kernel's {MAX_WIRES}"
    return ""


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=64)
def _tables(network: SortNetwork, n: int, width: int) -> tuple[Tensor, int, int]:
    """``(3, L, width)`` int32 gather tables (partner, sign, descending), layers, first wire."""
    plan = build_network(network, n)
    layers = max(1, len(plan.layers))  # L = 0 (n = 1): one identity layer keeps shapes valid
    tab = torch.zeros(3, layers, width, dtype=torch.int32)
    tab[0] = torch.arange(width, dtype=torch.int32)
    for li, layer in enumerate(plan.layers):
        for a, b, d in zip(layer.lo, layer.hi, layer.descending, strict=True):
            tab[0, li, a], tab[0, li, b] = b, a
            tab[1, li, a], tab[1, li, b] = 1, -1
            tab[2, li, a] = tab[2, li, b] = int(d)
    return tab, layers, plan.pad


if triton is not None:
    _jit: Callable[..., Any] = triton.jit  # typed alias: triton.jit itself is untyped

    @_jit
    def _cst(value: tl.constexpr, dt: tl.constexpr):  # type: ignore[no-untyped-def]
        return tl.full([], value, dt)

    @_jit
    def _atan(x, dt: tl.constexpr, f64: tl.constexpr):  # type: ignore[no-untyped-def]
        ax = tl.abs(x)
        one = _cst(1.0, dt)
        big = ax > _cst(2.41421356237309504880, dt)
        if f64:
            mid = ax > _cst(0.66, dt)
        else:
            mid = ax > _cst(0.4142135623730950, dt)
        num = tl.where(big, -one, ax - one)
        den = tl.where(big, ax, ax + one)
        z = tl.where(mid, num / den, ax)
        y0 = tl.where(big, _cst(1.57079632679489661923, dt),
                      tl.where(mid, _cst(0.78539816339744830962, dt), _cst(0.0, dt)))
        z2 = z * z
        if f64:
            p = (((_cst(-8.750608600031904122785e-1, dt) * z2
                   + _cst(-1.615753718733365076637e1, dt)) * z2
                  + _cst(-7.500855792314704667340e1, dt)) * z2
                 + _cst(-1.228866684490136173410e2, dt)) * z2 + _cst(-6.485021904942025371773e1, dt)
            q = ((((z2 + _cst(2.485846490142306297962e1, dt)) * z2
                   + _cst(1.650270098316988542046e2, dt)) * z2
                  + _cst(4.328810604912902668951e2, dt)) * z2
                 + _cst(4.853903996359136964868e2, dt)) * z2 + _cst(1.945506571482613964425e2, dt)
            r = z + z * (z2 * p / q)
            more = _cst(6.123233995736765886130e-17, dt)
            r = r + tl.where(big, more, tl.where(mid, _cst(0.5, dt) * more, _cst(0.0, dt)))
        else:
            r = (((_cst(8.05374449538e-2, dt) * z2 - _cst(1.38776856032e-1, dt)) * z2
                  + _cst(1.99777106478e-1, dt)) * z2 - _cst(3.33329491539e-1, dt)) * z2 * z + z
        res = y0 + r
        return tl.where(x < _cst(0.0, dt), -res, res)

    @_jit
    def _alpha(delta, beta, lam, dist: tl.constexpr, dt: tl.constexpr,  # type: ignore[no-untyped-def]
               f64: tl.constexpr):
        """F(beta * delta) and dF/d(delta), diffsort's order of operations (method.md §8)."""
        one = _cst(1.0, dt)
        half = _cst(0.5, dt)
        v = beta * delta
        if dist == 0:  # cauchy
            inv_pi = _cst(0.318309886183790671538, dt)
            alpha = _atan(v, dt, f64) * inv_pi + half
            slope = beta * inv_pi / (one + v * v)
        elif dist == 1:  # logistic
            alpha = one / (one + tl.exp(-(delta * beta)))
            slope = beta * alpha * (one - alpha)
        elif dist == 2:  # logistic_phi
            ad = tl.abs(delta) + _cst(1e-10, dt)
            s = tl.exp(lam * tl.log(ad))
            alpha = one / (one + tl.exp(-(delta * beta / s)))
            slope = alpha * (one - alpha) * beta / s * (one - lam * tl.abs(delta) / ad)
        elif dist == 3:  # reciprocal
            den = _cst(2.0, dt) + tl.abs(v)
            alpha = half * (v / den + one)
            slope = beta / (den * den)
        elif dist == 4:  # gaussian
            alpha = half + half * tl.math.erf(delta / (one / beta)
                                              / _cst(1.41421356237309504880, dt))
            slope = beta * _cst(0.398942280401432677940, dt) * tl.exp(-half * v * v)
        else:  # optimal
            quarter = _cst(0.25, dt)
            sixteenth = one / _cst(16.0, dt)
            av = tl.abs(v) + _cst(1e-10, dt)
            side = tl.where(v > quarter, one, tl.where(v < -quarter, -one, _cst(0.0, dt)))
            alpha = (tl.minimum(tl.maximum(v, -quarter), quarter) + half
                     + side * (quarter - sixteenth / av))
            slope = tl.where(tl.abs(v) <= quarter, beta, beta * sixteenth / (av * av))
        return alpha, slope

    @_jit
    def _rank_ce_kernel(  # type: ignore[no-untyped-def]
        ss_ptr, st_ptr, prm_ptr, tab_ptr, stats_ptr, grad_ptr, scratch_ptr,
        rows, n, pad, layers, nprog, scratch_stride,
        NW: tl.constexpr, RB: tl.constexpr, DIST: tl.constexpr, DT: tl.constexpr,
        F64: tl.constexpr, HAS_EPS: tl.constexpr, WANT_GRAD: tl.constexpr,
    ):
        pid = tl.program_id(0)
        wires = tl.arange(0, NW)
        real = (wires >= pad) & (wires < pad + n)
        beta_s = tl.load(prm_ptr)
        beta_t = tl.load(prm_ptr + 1)
        lam = tl.load(prm_ptr + 2)
        eps = tl.load(prm_ptr + 3)
        zero = _cst(0.0, DT)
        one = _cst(1.0, DT)
        lnw = layers * NW
        base = scratch_ptr + pid.to(tl.int64) * scratch_stride
        coef_t, coef_s, xdiff, slope_s, gsum = (base, base + lnw, base + 2 * lnw,
                                                base + 3 * lnw, base + 4 * lnw)
        hist = base + 5 * lnw
        tile = tl.arange(0, RB)[:, None] * NW + wires[None, :]
        for q in range(pid, rows, nprog):
            row = q * n  # the wrapper keeps rows * n < 2**31
            # 1. value paths (teacher, then student), one gather per layer
            for net in tl.static_range(2):
                src = st_ptr if net == 0 else ss_ptr
                beta = beta_t if net == 0 else beta_s
                x = tl.load(src + row + wires - pad, mask=real, other=0.0)
                for li in range(layers):
                    t_off = li * NW + wires
                    part = tl.load(tab_ptr + t_off)
                    sgn = tl.load(tab_ptr + lnw + t_off)
                    desc = tl.load(tab_ptr + 2 * lnw + t_off) != 0
                    xp = tl.gather(x, part, 0)
                    active = sgn != 0
                    alpha, slope = _alpha(sgn.to(DT) * (xp - x), beta, lam, DIST, DT, F64)
                    alpha1 = one - alpha
                    w_lo = tl.where(active, tl.where(desc, alpha1, alpha), one)
                    w_hi = tl.where(active, tl.where(desc, alpha, alpha1), zero)
                    if net == 0:
                        tl.store(coef_t + t_off, -w_hi)
                    else:
                        tl.store(coef_s + t_off, -w_hi)
                        tl.store(xdiff + t_off, x - xp)
                        tl.store(slope_s + t_off,
                                 tl.where(active, tl.where(desc, -slope, slope), zero))
                        tl.store(gsum + t_off, tl.zeros([NW], DT))
                    x = w_lo * x + w_hi * xp
            tl.debug_barrier()
            # 2. Q, P, cross-entropy and the permutation-path backward, RB input rows at a time
            ce = zero
            ent = zero
            pmin = _cst(float("inf"), DT)
            psum = zero
            qsum = zero
            for r0 in range(0, n, RB):
                inputs = r0 + tl.arange(0, RB)
                valid = (inputs < n)[:, None] & real[None, :]
                eye = tl.where(wires[None, :] == inputs[:, None] + pad, one, zero)
                eye = tl.where(valid, eye, zero)
                qm = eye
                pm = eye
                for li in range(layers):
                    t_off = li * NW + wires
                    part = tl.broadcast_to(tl.load(tab_ptr + t_off)[None, :], (RB, NW))
                    qm = qm + tl.load(coef_t + t_off)[None, :] * (qm - tl.gather(qm, part, 1))
                    d = pm - tl.gather(pm, part, 1)
                    if WANT_GRAD:
                        tl.store(hist + li * (RB * NW) + tile, d)
                    pm = pm + tl.load(coef_s + t_off)[None, :] * d
                if HAS_EPS:
                    live = pm >= eps
                else:
                    live = pm == pm
                logp = tl.log(tl.where(live, pm, eps))
                ce += tl.sum(tl.sum(tl.where(valid, -qm * logp, zero), 1), 0)
                logq = tl.log(tl.maximum(qm, _cst(1e-30, DT)))
                ent += tl.sum(tl.sum(tl.where(valid, -qm * logq, zero), 1), 0)
                pmin = tl.minimum(pmin, tl.min(tl.min(tl.where(valid, pm, float("inf")), 1), 0))
                pmax = tl.max(tl.where(valid, pm, -float("inf")), 1)
                qmax = tl.max(tl.where(valid, qm, -float("inf")), 1)
                psum += tl.sum(tl.where(inputs < n, pmax, zero), 0)
                qsum += tl.sum(tl.where(inputs < n, qmax, zero), 0)
                if WANT_GRAD:
                    g = tl.where(valid & live, -qm / pm, zero)
                    tl.debug_barrier()
                    for i in range(layers):
                        li = layers - 1 - i
                        t_off = li * NW + wires
                        part = tl.broadcast_to(tl.load(tab_ptr + t_off)[None, :], (RB, NW))
                        e = g - tl.gather(g, part, 1)
                        d = tl.load(hist + li * (RB * NW) + tile)
                        acc = tl.load(gsum + t_off) + tl.sum(e * d, 0)
                        tl.store(gsum + t_off, acc)
                        g = g + tl.load(coef_s + t_off)[None, :] * e
                    tl.debug_barrier()
            out = stats_ptr + q * 5
            tl.store(out, ce)
            tl.store(out + 1, ent)
            tl.store(out + 2, pmin)
            tl.store(out + 3, psum)
            tl.store(out + 4, qsum)
            # 3. value-path backward: c depends on delta = x_hi - x_lo of its inputs
            if WANT_GRAD:
                gx = tl.zeros([NW], DT)
                for i in range(layers):
                    li = layers - 1 - i
                    t_off = li * NW + wires
                    part = tl.load(tab_ptr + t_off)
                    sgn = tl.load(tab_ptr + lnw + t_off).to(DT)
                    ev = gx - tl.gather(gx, part, 0)
                    gd = (tl.load(gsum + t_off) + ev * tl.load(xdiff + t_off)) * tl.load(
                        slope_s + t_off)
                    gx = gx + tl.load(coef_s + t_off) * ev - sgn * gd
                tl.store(grad_ptr + row + wires - pad, gx, mask=real)
            tl.debug_barrier()


def rank_ce_triton(
    s_student: Tensor, s_teacher: Tensor, *, network: SortNetwork, distribution: SortDistribution,
    steepness_student: float, steepness_teacher: float, art_lambda: float, log_eps: float,
    want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-query rank cross-entropy and its gradient with the Triton kernel.

    Same contract as :func:`neco.method.fused_cpu.rank_ce_cpu`: ``(R, n)`` contiguous float32
    or float64 inputs on a CUDA device (or CPU tensors under ``TRITON_INTERPRET=1``); returns
    ``(stats (R, 5), grad (R, n) or None)``.

    Raises:
        ValueError: the kernel cannot run here (:func:`unsupported_reason`).
    """
    rows, n = s_student.shape
    why = unsupported_reason(n)
    if why:
        raise ValueError(f"train.loss.implementation = fused (Triton): {why}")
    plan = build_network(network, n)
    width = max(2, _next_pow2(plan.num_wires))
    block = max(1, min(_next_pow2(n), _TILE // width))
    dev, dtype = s_student.device, s_student.dtype
    tab, layers, pad = _tables(network, n, width)
    tab = tab.to(dev)
    prm = torch.tensor([steepness_student, steepness_teacher, art_lambda,
                        log_eps if log_eps > 0 else 1.0], dtype=dtype, device=dev)
    if dev.type == "cuda":
        nprog = min(rows, 8 * torch.cuda.get_device_properties(dev).multi_processor_count)
    else:
        nprog = min(rows, 4)
    nprog = max(nprog, 1)
    stride = 5 * layers * width + layers * block * width
    scratch = torch.empty(nprog, stride, dtype=dtype, device=dev)
    stats = torch.empty(rows, _STATS, dtype=dtype, device=dev)
    grad = torch.empty_like(s_student) if want_grad else None
    assert tl is not None and triton is not None
    step = (2**31 - 1) // max(n, _STATS)  # int32 offsets inside the kernel
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        _rank_ce_kernel[(min(nprog, stop - start),)](
            s_student[start:stop], s_teacher[start:stop], prm, tab, stats[start:stop],
            (grad if grad is not None else stats)[start:stop], scratch,
            stop - start, n, pad, layers, min(nprog, stop - start), stride,
            NW=width, RB=block, DIST=_DIST_CODE[distribution],
            DT=tl.float64 if dtype == torch.float64 else tl.float32, F64=dtype == torch.float64,
            HAS_EPS=log_eps > 0, WANT_GRAD=want_grad,
            num_warps=8 if block * width >= 2048 else 4,  # 64 x 64 fp32 tile: no spills (sm_90)
        )
    return stats, grad
