"""Differentiable sorting networks: exact O(n^2)-per-layer relaxation (method.md §8, D3, D4).

Re-implements the relaxed sorting networks of Petersen et al. (ICML 2021,
https://arxiv.org/abs/2105.04019; ICLR 2022, https://arxiv.org/abs/2203.09630; reference code
https://github.com/Felix-Petersen/diffsort, package ``diffsort`` 0.2.0) and returns the same
values, relaxed permutation matrices and gradients as ``diffsort.functional.sort``, without its
dense ``O(n^3)``-per-layer 0/1 matmuls.

A relaxed comparator on wires ``lo < hi`` with values ``a, b`` uses ``alpha = F(steepness * (b -
a))``; ascending it writes ``alpha*a + (1-alpha)*b`` to ``lo`` and ``(1-alpha)*a + alpha*b`` to
``hi`` (descending the other way round). The permutation ``X`` (starting at the identity) mixes
columns ``lo, hi`` with the same weights, ``X_lo += c * (X_lo - X_hi)``, ``X_hi -= c * (X_lo -
X_hi)`` with ``c = w_lo - 1``. Convention (diffsort's): ``P[r, i, k]`` is the probability that
input ``i`` of row ``r`` lands at ascending rank ``k``, so ``sorted[r] = x[r] @ P[r]`` and P is
doubly stochastic.

Execution (method.md §14.3 "exact rewrite"): wire-major layout ``X[wire, input, row]``, layers
applied in place on strided views, dropped (pad) wires never touched, the permutation kept
block-diagonal while the bitonic blocks cannot mix groups, and a hand-written backward: the 2x2
mixing matrix is symmetric, so the gradient pass is the same update, and ``dL/dc = sum_inputs
(G_lo - G_hi) * (X_lo - X_hi)``; per layer only ``X_lo - X_hi`` (and the per-comparator
``delta = b - a`` and ``c``) is saved. The value path uses exactly diffsort's arithmetic, so
sorted values and comparator weights match it bit for bit (up to libm ulps); ``dF/d(delta)`` is
autograd of the same formula, evaluated once for all layers in the backward. For gaussian this
derivative is exact, whereas diffsort's backward uses sigma = 1/steepness rounded to fp32
(~1e-7 relative gradient difference, even in fp64).
"""

from __future__ import annotations

import enum
import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from neco.config.method import SortDistribution, SortNetwork
from neco.method.sorting_networks import (
    NetworkPlan,
    build_network,
    comparator_rows,
    descending_masks,
    identity_blocks,
    regroup,
    wire_views,
)

__all__ = ["DiffSort", "SortDistribution", "SortNetwork", "soft_sort"]


_ROW_BLOCK = 16  # rows per block when transposing gradients into the wire-major layout


def _alpha(delta: Tensor, steepness: float, dist: SortDistribution, art_lambda: float) -> Tensor:
    """Weight of the ascending minimum on the lower wire, ``F(steepness * delta)``.

    The expressions follow diffsort's order of operations so that results are bit-identical
    (gaussian: diffsort divides by ``sigma = 1 / steepness``; optimal: its ``1e-10`` guard).

    Args:
        delta: ``b - a``, any shape.
    """
    if dist is SortDistribution.CAUCHY:
        return torch.atan(steepness * delta) * (1 / math.pi) + 0.5
    if dist is SortDistribution.LOGISTIC:
        return torch.sigmoid(delta * steepness)
    if dist is SortDistribution.LOGISTIC_PHI:
        return torch.sigmoid(delta * steepness / (delta.abs() + 1.0e-10).pow(art_lambda))
    if dist is SortDistribution.GAUSSIAN:
        return 0.5 + 0.5 * torch.erf(delta / (1 / steepness) / math.sqrt(2))
    v = steepness * delta
    if dist is SortDistribution.RECIPROCAL:
        return 0.5 * (v / (2 + v.abs()) + 1)
    side = (v > 0.25).to(v.dtype) - (v < -0.25).to(v.dtype)  # OPTIMAL
    return torch.clamp(v, -0.25, 0.25) + 0.5 + side * (0.25 - 1 / 16 / (v.abs() + 1e-10))


def _slope(delta: Tensor, steepness: float, dist: SortDistribution, art_lambda: float) -> Tensor:
    """Elementwise derivative of :func:`_alpha` with respect to ``delta`` (autograd of F)."""
    with torch.enable_grad():
        leaf = delta.detach().requires_grad_(True)
        alpha = _alpha(leaf, steepness, dist, art_lambda)
        (slope,) = torch.autograd.grad(alpha, leaf, torch.ones_like(alpha))
    return slope


def _forward(
    x: Tensor, plan: NetworkPlan, masks: tuple[Tensor | None, ...], steepness: float,
    dist: SortDistribution, art_lambda: float, save: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Run the network on ``x`` ``(R, n)``; return sorted ``(R, n)``, P ``(R, n, n)``, saved."""
    rows, wires, pad = x.shape[0], plan.num_wires, plan.pad
    xw = x.new_zeros(wires, rows)
    xw[pad:] = x.t()
    group = plan.layers[0].group_size if plan.layers else wires
    perm = identity_blocks(plan, group, rows, x)
    saved: list[Tensor] = []
    for layer, desc in zip(plan.layers, masks, strict=True):
        if layer.group_size != group:
            perm = regroup(plan, perm, group, layer.group_size, forward=True)
            group = layer.group_size
        delta = x.new_empty(layer.size, rows)
        off = 0
        for seg in layer.segments:
            a, b = wire_views(xw, seg)
            torch.sub(b, a, out=comparator_rows(delta, off, seg))
            off += seg.size
        alpha = _alpha(delta, steepness, dist, art_lambda)
        alpha1 = 1 - alpha
        w_lo, w_hi = (alpha, alpha1) if desc is None else (
            torch.where(desc, alpha1, alpha), torch.where(desc, alpha, alpha1))
        coef = -w_hi  # c = w_lo - 1
        diff = perm.new_empty(layer.size, perm.shape[1], rows)
        off = 0
        for seg in layer.segments:
            a, b = wire_views(xw, seg)
            wl, wh = comparator_rows(w_lo, off, seg), comparator_rows(w_hi, off, seg)
            new_a, new_b = wl * a + wh * b, wh * a + wl * b  # diffsort's exact arithmetic
            a.copy_(new_a)
            b.copy_(new_b)
            pa, pb = wire_views(perm, seg)
            c, d = comparator_rows(coef, off, seg).unsqueeze(2), comparator_rows(diff, off, seg)
            torch.sub(pa, pb, out=d)
            pa.addcmul_(c, d)
            pb.addcmul_(c, d, value=-1)
            off += seg.size
        if save:
            saved += [delta, coef, diff]
    sorted_x = xw[pad:].t().contiguous()
    return sorted_x, perm[pad:].permute(2, 1, 0).contiguous(), saved


def _backward(
    plan: NetworkPlan, masks: tuple[Tensor | None, ...], steepness: float,
    dist: SortDistribution, art_lambda: float, saved: tuple[Tensor, ...],
    g_sorted: Tensor | None, g_perm: Tensor | None, like: Tensor,
) -> Tensor:
    """Gradient ``(R, n)`` of the loss w.r.t. the input rows, given output gradients."""
    deltas = saved[0::3]
    if deltas:  # dc/d(delta) of every comparator at once: +F' ascending, -F' descending
        slope = _slope(torch.cat(deltas), steepness, dist, art_lambda)
        slopes = list(torch.split(slope, [d.shape[0] for d in deltas]))
        for li, desc in enumerate(masks):
            if desc is not None:
                slopes[li] = torch.where(desc, -slopes[li], slopes[li])
    rows, wires, pad = like.shape[0], plan.num_wires, plan.pad
    gx = like.new_zeros(wires, rows)
    if g_sorted is not None:
        gx[pad:] = g_sorted.t()
    gp: Tensor | None = None
    if g_perm is not None:  # (R, n, n) -> wire-major; blocks of rows keep the gather cached
        gp = like.new_empty(wires, plan.size, rows)
        gp[:pad].zero_()
        for r in range(0, rows, _ROW_BLOCK):
            gp[pad:, :, r:r + _ROW_BLOCK] = g_perm[r:r + _ROW_BLOCK].permute(2, 1, 0)
    for li in range(len(plan.layers) - 1, -1, -1):
        layer = plan.layers[li]
        delta, coef, diff = saved[3 * li:3 * li + 3]
        ev = torch.empty_like(delta)
        gc = torch.zeros_like(delta)
        off = 0
        for seg in layer.segments:
            ga, gb = wire_views(gx, seg)
            torch.sub(ga, gb, out=comparator_rows(ev, off, seg))
            if gp is not None:
                pa, pb = wire_views(gp, seg)
                c = comparator_rows(coef, off, seg).unsqueeze(2)
                e = pa - pb
                pa.addcmul_(c, e)
                pb.addcmul_(c, e, value=-1)
                e.mul_(comparator_rows(diff, off, seg))
                torch.sum(e, dim=2, out=comparator_rows(gc, off, seg))
            off += seg.size
        g_delta = gc.sub_(ev * delta).mul_(slopes[li])  # value path: dL/dc += ev * (a - b)
        off = 0
        for seg in layer.segments:
            ga, gb = wire_views(gx, seg)
            c, e, gd = (comparator_rows(t, off, seg) for t in (coef, ev, g_delta))
            ga.addcmul_(c, e).sub_(gd)
            gb.addcmul_(c, e, value=-1).add_(gd)
            off += seg.size
        prev = plan.layers[li - 1].group_size if li > 0 else layer.group_size
        if gp is not None and prev != layer.group_size:
            gp = regroup(plan, gp, prev, layer.group_size, forward=False)
    return gx[pad:].t().contiguous()


class _SoftSort(torch.autograd.Function):
    """Autograd wrapper with the hand-written, once-differentiable backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, plan: NetworkPlan, masks: tuple[Tensor | None, ...],
        steepness: float, dist: SortDistribution, art_lambda: float,
    ) -> tuple[Tensor, Tensor]:
        sorted_x, perm, saved = _forward(x, plan, masks, steepness, dist, art_lambda, True)
        ctx.args = (plan, masks, steepness, dist, art_lambda)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, *saved)
        return sorted_x, perm

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_sorted: Tensor | None, g_perm: Tensor | None) -> Any:
        x, *saved = ctx.saved_tensors
        plan, masks, steepness, dist, art_lambda = ctx.args
        gx = _backward(plan, masks, steepness, dist, art_lambda, tuple(saved), g_sorted, g_perm, x)
        return gx, None, None, None, None, None


def soft_sort(
    x: Tensor, *, network: SortNetwork | str, steepness: float,
    distribution: SortDistribution | str, art_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Sort each row of ``x`` ascending with a relaxed sorting network (method.md §8).

    Numerically equal to ``diffsort.functional.sort(get_sorting_network(network, n), x,
    steepness, art_lambda, distribution)`` (bit-identical sorted values; P and gradients to
    rounding), at ``O(n^2)`` work per row and layer instead of ``O(n^3)``. Runs in float32
    (float64 if ``x`` is float64) with autocast disabled (D3); bf16/fp16 inputs are upcast.

    Args:
        x: rows to sort, ``(R, n)``, floating point, finite.
        network: ``bitonic`` or ``odd_even`` (enum or its value).
        steepness: inverse temperature beta > 0 of the comparators (official 100).
        distribution: comparator relaxation F (enum or its value; official cauchy).
        art_lambda: exponent lambda of ``logistic_phi`` (official 0.25); unused otherwise.

    Returns:
        ``(sorted, P)``: relaxed sorted values ``(R, n)`` and relaxed permutation matrices
        ``(R, n, n)``, where ``P[r, i, k]`` is the probability that input ``i`` lands at
        ascending rank ``k`` and ``sorted[r] = x[r] @ P[r]``. Gradients flow to ``x``
        (once differentiable).

    Raises:
        ValueError: malformed ``x``, ``steepness`` or ``art_lambda``.
        FloatingPointError: ``x`` holds NaN or inf (it would give a silent all-NaN row).
    """
    net = _enum(SortNetwork, network, "network")
    dist = _enum(SortDistribution, distribution, "distribution")
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"soft_sort: x must be a floating (R, n) tensor, got {got}")
    if x.shape[1] < 1:
        raise ValueError(f"soft_sort: x has n = {x.shape[1]} columns, expected n >= 1")
    if not (math.isfinite(steepness) and steepness > 0):
        raise ValueError(f"soft_sort: steepness = {steepness!r}, expected a finite value > 0")
    if not math.isfinite(art_lambda):
        raise ValueError(f"soft_sort: art_lambda = {art_lambda!r}, expected a finite value")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        raise FloatingPointError(
            f"soft_sort: x has {bad.shape[0]} non-finite value(s) (first at row {int(bad[0, 0])}, "
            f"column {int(bad[0, 1])}: {x[bad[0, 0], bad[0, 1]].item()}); the inputs to the sort "
            f"(similarities) are already NaN/inf, so the backbone or head diverged upstream "
            f"(e.g. a too-high learning rate or fp16 overflow); the sort itself cannot recover"
        )
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    plan = build_network(net, x.shape[1])
    masks = descending_masks(net, x.shape[1], x.device)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xc = x.to(compute)
        if torch.is_grad_enabled() and xc.requires_grad:
            out: tuple[Tensor, Tensor] = _SoftSort.apply(
                xc, plan, masks, float(steepness), dist, float(art_lambda))
            return out
        sorted_x, perm, _ = _forward(
            xc.detach(), plan, masks, float(steepness), dist, float(art_lambda), False)
        return sorted_x, perm


def _enum(kind: type[enum.Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = [m.value for m in kind]
        raise ValueError(f"soft_sort: {name} = {value!r}, expected one of {allowed}") from None


class DiffSort(torch.nn.Module):
    """Relaxed sorter for rows of a fixed length ``size`` (thin shell over :func:`soft_sort`).

    Args:
        size: row length n the sorter accepts.
        network: ``bitonic`` or ``odd_even``.
        steepness: comparator steepness beta > 0.
        distribution: comparator relaxation F.
        art_lambda: exponent of ``logistic_phi``; unused otherwise.
    """

    def __init__(
        self, size: int, *, network: SortNetwork | str, steepness: float,
        distribution: SortDistribution | str, art_lambda: float,
    ) -> None:
        super().__init__()
        self.network = _enum(SortNetwork, network, "network")
        self.distribution = _enum(SortDistribution, distribution, "distribution")
        build_network(self.network, size)  # validates size, warms the cache
        self.size, self.steepness, self.art_lambda = size, float(steepness), float(art_lambda)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sort ``x`` ``(R, size)``; return ``(sorted (R, size), P (R, size, size))``."""
        if x.dim() != 2 or x.shape[1] != self.size:
            raise ValueError(
                f"DiffSort(size={self.size}): input of shape {tuple(x.shape)}, "
                f"expected (R, {self.size})")
        return soft_sort(x, network=self.network, steepness=self.steepness,
                         distribution=self.distribution, art_lambda=self.art_lambda)

    def extra_repr(self) -> str:
        return (f"size={self.size}, network={self.network.value}, steepness={self.steepness}, "
                f"distribution={self.distribution.value}, art_lambda={self.art_lambda}")
