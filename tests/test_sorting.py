"""neco.method.sorting vs the ``diffsort`` 0.2.0 package (method.md §8, §14.3(e), D3, D4).

Reference: ``diffsort.functional.sort`` on ``diffsort.networks.get_sorting_network`` (dense 0/1
matmuls, run in full fp32 precision, TF32 off). Compared: sorted values, relaxed permutation P
and the gradient w.r.t. x of a random linear functional ``sum(sorted*U) + sum(P*W)``.
Tolerances: fp64 |dP| <= 1e-10, relative grad error <= 1e-10 (gaussian 1e-6: diffsort keeps
sigma = 1/beta as an fp32 tensor in its backward); fp32 1e-5 (logistic_phi gradients 1e-3, see
``test_matches_diffsort``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import torch

from neco.config.method import SortDistribution
from neco.method.sorting import DiffSort, SortNetwork, soft_sort
from neco.method.sorting_networks import build_network

diffsort = pytest.importorskip("diffsort")

NETS = tuple(SortNetwork)
DISTS = tuple(SortDistribution)
LAMBDA = 0.25  # official art_lambda


@pytest.fixture(autouse=True)
def _strict_fp32() -> Iterator[None]:
    """diffsort's 0/1 matmuls are exact only without TF32 / reduced-precision matmuls."""
    prec, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(prec)
    torch.backends.cuda.matmul.allow_tf32 = tf32


def _ours(net: SortNetwork, beta: float, dist: SortDistribution) -> Callable:
    return lambda x: soft_sort(x, network=net, steepness=beta, distribution=dist,
                               art_lambda=LAMBDA)


def _theirs(net: SortNetwork, beta: float, dist: SortDistribution) -> Callable:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        network = diffsort.networks.get_sorting_network(net.value, x.shape[1], x.device)
        return diffsort.functional.sort(network, x, beta, LAMBDA, dist.value)
    return run


def _evaluate(
    fn: Callable, x: torch.Tensor, u: torch.Tensor | None, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted, P and d/dx of ``sum(sorted*u) + sum(P*w)`` (a None term is left out)."""
    x = x.detach().clone().requires_grad_(True)
    s, p = fn(x)
    loss = sum(((t * c).sum() for t, c in ((s, u), (p, w)) if c is not None),
               torch.zeros((), dtype=x.dtype))
    loss.backward()
    return s.detach(), p.detach(), x.grad


def _inputs(rows: int, n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g, dtype=torch.float64)
    u = torch.randn(rows, n, generator=g, dtype=torch.float64)
    w = torch.randn(rows, n, n, generator=g, dtype=torch.float64)
    return x.to(dtype), u.to(dtype), w.to(dtype)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def _grid() -> Iterator[tuple]:
    """Full grid for small n; every n with bitonic+cauchy and both networks; a mixed subset."""
    dtypes = (torch.float64, torch.float32)
    betas = (10.0, 100.0)
    for n, net, dist, beta, dt in itertools.product((2, 3, 5, 16), NETS, DISTS, betas, dtypes):
        yield n, net, dist, beta, dt
    for n, beta, dt in itertools.product((49, 64, 100), betas, dtypes):
        yield n, SortNetwork.BITONIC, SortDistribution.CAUCHY, beta, dt
        yield n, SortNetwork.ODD_EVEN, SortDistribution.CAUCHY, beta, dt
    for dist in DISTS[1:]:
        yield 49, SortNetwork.BITONIC, dist, 100.0, torch.float64
        yield 49, SortNetwork.BITONIC, dist, 100.0, torch.float32
        yield 64, SortNetwork.ODD_EVEN, dist, 10.0, torch.float64
        yield 100, SortNetwork.BITONIC, dist, 10.0, torch.float32


@pytest.mark.parametrize(("n", "net", "dist", "beta", "dtype"), list(_grid()),
                         ids=lambda v: getattr(v, "value", str(v).replace("torch.", "")))
def test_matches_diffsort(n: int, net: SortNetwork, dist: SortDistribution, beta: float,
                          dtype: torch.dtype) -> None:
    rows = 8 if n <= 16 else (3 if net is SortNetwork.ODD_EVEN and n > 64 else 6)
    x, u, w = _inputs(rows, n, dtype, seed=n * 7 + int(beta))
    s1, p1, g1 = _evaluate(_ours(net, beta, dist), x, u, w)
    s2, p2, g2 = _evaluate(_theirs(net, beta, dist), x, u, w)
    assert s1.dtype == p1.dtype == g1.dtype == dtype
    if dtype == torch.float64:
        tol_p, tol_g = 1e-10, (1e-6 if dist is SortDistribution.GAUSSIAN else 1e-10)
    else:
        # logistic_phi's slope ~ |delta|**-lambda is ill-conditioned near ties of relaxed
        # values: diffsort's own fp32 gradient is up to ~4e-4 (relative) off its fp64 one.
        tol_p, tol_g = 1e-5, (1e-3 if dist is SortDistribution.LOGISTIC_PHI else 1e-5)
    assert (p1 - p2).abs().max().item() <= tol_p
    assert _rel(s1, s2) <= tol_p
    assert _rel(g1, g2) <= tol_g


@pytest.mark.parametrize("net", NETS, ids=lambda v: v.value)
@pytest.mark.parametrize("which", ["P only", "sorted only"])
def test_single_output_gradients_match_diffsort(net: SortNetwork, which: str) -> None:
    """Backward with one output unused (its incoming gradient is None, not zeros)."""
    x, u, w = _inputs(5, 13, torch.float64, seed=3)
    u, w = (None, w) if which == "P only" else (u, None)
    *_, g1 = _evaluate(_ours(net, 30.0, SortDistribution.CAUCHY), x, u, w)
    *_, g2 = _evaluate(_theirs(net, 30.0, SortDistribution.CAUCHY), x, u, w)
    assert _rel(g1, g2) <= 1e-10


@pytest.mark.parametrize("dist", DISTS, ids=lambda v: v.value)
def test_gradcheck_against_finite_differences(dist: SortDistribution) -> None:
    """The hand-written backward against finite differences (independent of diffsort)."""
    x, *_ = _inputs(3, 6, torch.float64, seed=11)
    for net in NETS:
        fn = _ours(net, 3.0, dist)
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [*range(1, 70), 100, 127, 128, 129])
def test_networks_match_diffsort_comparators(n: int) -> None:
    """Our comparator lists equal diffsort's matrices with identity comparators removed."""
    for net in NETS:
        theirs = []
        for split_a, split_b, combine_min, _ in getattr(
                diffsort.networks, f"{net.value}_network")(n):
            layer = []
            for c in range(split_a.shape[0]):
                lo, hi = int(split_a[c].argmax()), int(split_b[c].argmax())
                if lo == hi:  # identity comparator: halves recombined on the same wire
                    continue
                layer.append((lo, hi, combine_min[lo, c] == 0))
            if layer:
                theirs.append(layer)
        plan = build_network(net, n)
        ours = [[(lo - plan.pad, hi - plan.pad, d) for lo, hi, d in
                 zip(layer.lo, layer.hi, layer.descending, strict=True)] for layer in plan.layers]
        assert ours == theirs


def test_network_sizes_and_cache() -> None:
    """method.md §8: bitonic n=49 -> 64 wires, 21 layers, <= 32 comparators; cached."""
    plan = build_network(SortNetwork.BITONIC, 49)
    assert (plan.num_wires, len(plan.layers)) == (64, 21)
    assert max(layer.size for layer in plan.layers) <= 32
    assert len(build_network(SortNetwork.BITONIC, 512).layers) == 45
    assert len(build_network(SortNetwork.ODD_EVEN, 49).layers) == 49
    assert build_network(SortNetwork.BITONIC, 49) is plan
    assert build_network("bitonic", 49) is plan  # type: ignore[arg-type]


@pytest.mark.parametrize("net", NETS, ids=lambda v: v.value)
def test_doubly_stochastic_fp32(net: SortNetwork) -> None:
    x, *_ = _inputs(64, 49, torch.float32, seed=5)
    _, p = _ours(net, 100.0, SortDistribution.CAUCHY)(x)
    assert p.dtype == torch.float32 and (p >= 0).all()
    assert (p.sum(1) - 1).abs().max().item() <= 1e-6
    assert (p.sum(2) - 1).abs().max().item() <= 1e-6


@pytest.mark.parametrize("n", [2, 3, 5, 16, 49, 64, 100])
@pytest.mark.parametrize("net", NETS, ids=lambda v: v.value)
def test_hard_sort_limit(n: int, net: SortNetwork) -> None:
    """At steepness 1e14 the network is an exact hard sorter (method.md §8)."""
    x, *_ = _inputs(16, n, torch.float64, seed=n)
    dists = DISTS if n == 16 else (SortDistribution.CAUCHY,)
    values, index = torch.sort(x, dim=1)
    hard = torch.zeros(16, n, n, dtype=torch.float64)
    hard[torch.arange(16)[:, None], index, torch.arange(n)] = 1  # P[r, i, k]: input i -> rank k
    for dist in dists:
        s, p = _ours(net, 1e14, dist)(x)
        assert (p - hard).abs().max().item() <= 1e-6
        assert (s - values).abs().max().item() <= 1e-9
        torch.testing.assert_close(torch.einsum("ri,rik->rk", x, p), s)  # sorted = x @ P


def test_rows_ascending_at_high_steepness() -> None:
    x, *_ = _inputs(32, 49, torch.float32, seed=9)
    s, _ = _ours(SortNetwork.BITONIC, 1e6, SortDistribution.CAUCHY)(x)
    assert (s[:, 1:] >= s[:, :-1]).all()
    torch.testing.assert_close(s, torch.sort(x, dim=1).values, atol=1e-4, rtol=0)


def test_softness_anchors() -> None:
    """Mean row-max of P for N(0,1) rows, n = 49 (method.md §8: 0.12 / 0.62 / 0.92)."""
    x, *_ = _inputs(1024, 49, torch.float64, seed=2)
    for beta, expected in ((10.0, 0.12), (100.0, 0.62), (1000.0, 0.92)):
        _, p = _ours(SortNetwork.BITONIC, beta, SortDistribution.CAUCHY)(x)
        assert abs(p.amax(-1).mean().item() - expected) <= 0.03


def test_autocast_and_low_precision_inputs() -> None:
    """D3: fp32 inside bf16 autocast; bf16/fp16 inputs are upcast; fp64 stays fp64."""
    x, *_ = _inputs(32, 49, torch.float32, seed=4)
    fn = _ours(SortNetwork.BITONIC, 100.0, SortDistribution.CAUCHY)
    s_ref, p_ref = fn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, p = fn(x)
    assert s.dtype == p.dtype == torch.float32
    torch.testing.assert_close(p, p_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(s, s_ref, atol=1e-6, rtol=0)
    for low in (torch.bfloat16, torch.float16):
        xl = x.to(low).requires_grad_(True)
        s, p = fn(xl)
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, fn(xl.detach().float())[1], atol=0, rtol=0)
        p.sum().backward()
        assert xl.grad is not None and xl.grad.dtype == low
    assert fn(x.double())[1].dtype == torch.float64


def test_no_grad_path_equals_grad_path() -> None:
    x, *_ = _inputs(12, 49, torch.float32, seed=8)
    fn = _ours(SortNetwork.BITONIC, 100.0, SortDistribution.LOGISTIC_PHI)
    with torch.no_grad():
        s0, p0 = fn(x.requires_grad_(True))
    s1, p1 = fn(x)
    assert s1.requires_grad and not p0.requires_grad
    assert torch.equal(s0, s1.detach()) and torch.equal(p0, p1.detach())


def test_trivial_sizes() -> None:
    x = torch.randn(3, 1, requires_grad=True)
    s, p = _ours(SortNetwork.BITONIC, 10.0, SortDistribution.CAUCHY)(x)
    assert torch.equal(s, x.detach()) and torch.equal(p, torch.ones(3, 1, 1))
    (s.sum() + p.sum()).backward()
    assert torch.equal(x.grad, torch.ones(3, 1))
    s, p = _ours(SortNetwork.BITONIC, 10.0, SortDistribution.CAUCHY)(torch.randn(0, 7))
    assert s.shape == (0, 7) and p.shape == (0, 7, 7)


def test_module_and_errors() -> None:
    sorter = DiffSort(7, network="odd_even", steepness=10.0, distribution="reciprocal",
                      art_lambda=LAMBDA)
    assert sorter.network is SortNetwork.ODD_EVEN and "size=7" in repr(sorter)
    x, *_ = _inputs(4, 7, torch.float64, seed=1)
    s, p = sorter(x)
    s_ref, p_ref = _ours(SortNetwork.ODD_EVEN, 10.0, SortDistribution.RECIPROCAL)(x)
    assert torch.equal(s, s_ref) and torch.equal(p, p_ref)
    with pytest.raises(ValueError, match=r"DiffSort\(size=7\).*\(4, 8\)"):
        sorter(torch.randn(4, 8))
    with pytest.raises(ValueError, match="network = 'quick'"):
        soft_sort(x, network="quick", steepness=1.0, distribution="cauchy", art_lambda=0.25)
    with pytest.raises(ValueError, match="distribution = 'normal'"):
        DiffSort(7, network="bitonic", steepness=1.0, distribution="normal", art_lambda=0.25)
    with pytest.raises(ValueError, match="steepness"):
        soft_sort(x, network="bitonic", steepness=0.0, distribution="cauchy", art_lambda=0.25)
    with pytest.raises(ValueError, match=r"\(R, n\)"):
        soft_sort(x[0], network="bitonic", steepness=1.0, distribution="cauchy", art_lambda=0.25)
    with pytest.raises(ValueError, match="size"):
        build_network(SortNetwork.BITONIC, 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_a_clear_error(bad: float) -> None:
    """A NaN/inf similarity used to give a silent all-NaN row of P; now it names the entry."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    x[2, 5] = bad
    msg = r"1 non-finite value\(s\) \(first at row 2, column 5"
    with pytest.raises(FloatingPointError, match=msg):
        soft_sort(x, network="bitonic", steepness=10.0, distribution="cauchy", art_lambda=0.25)
