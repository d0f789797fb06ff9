"""The Triton fused NeCo loss (``neco.method.fused_triton``) under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before triton is first imported, so the kernel runs in a
fresh subprocess (one per session) that evaluates a grid of cases through the public
``rank_cross_entropy(..., backend="triton")`` (autograd included) and reports the errors
against ``diffsort`` and the exact path as JSON; each case is then its own test here. Same
bars as tests/test_fused_loss.py: 1e-10 relative in float64, 1e-5 in float32 (method.md §14.3e).
Skips cleanly where triton or diffsort is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("triton", reason="triton is not installed")
pytest.importorskip("diffsort", reason="diffsort (the test reference) is not installed")

ROOT = Path(__file__).resolve().parents[1]

# (name, network, distribution, n, rows, beta_s, beta_t, dtype, log_eps); 6 rows on 4 programs
# exercise the persistent loop over queries, "rowblocks" the accumulation over row blocks
CASES = [
    ("bitonic-cauchy-n16-fp64", "bitonic", "cauchy", 16, 2, 100.0, 100.0, "float64", 0.0),
    ("bitonic-cauchy-n16-fp32", "bitonic", "cauchy", 16, 2, 100.0, 100.0, "float32", 0.0),
    ("bitonic-cauchy-n49-fp64", "bitonic", "cauchy", 49, 1, 100.0, 100.0, "float64", 0.0),
    ("bitonic-cauchy-n49-fp32", "bitonic", "cauchy", 49, 1, 100.0, 100.0, "float32", 0.0),
    ("bitonic-cauchy-n37-fp64", "bitonic", "cauchy", 37, 1, 100.0, 1000.0, "float64", 0.0),
    ("odd_even-cauchy-n13-fp64", "odd_even", "cauchy", 13, 2, 100.0, 100.0, "float64", 0.0),
    ("odd_even-cauchy-n13-fp32", "odd_even", "cauchy", 13, 2, 100.0, 100.0, "float32", 0.0),
    ("bitonic-logistic-n6-fp64", "bitonic", "logistic", 6, 6, 10.0, 10.0, "float64", 0.0),
    ("bitonic-logistic_phi-n6-fp64", "bitonic", "logistic_phi", 6, 6, 10.0, 100.0, "float64",
     0.0),
    ("bitonic-reciprocal-n6-fp64", "bitonic", "reciprocal", 6, 6, 100.0, 100.0, "float64", 0.0),
    ("bitonic-gaussian-n6-fp64", "bitonic", "gaussian", 6, 6, 4.0, 4.0, "float64", 0.0),
    ("bitonic-optimal-n6-fp64", "bitonic", "optimal", 6, 6, 100.0, 100.0, "float64", 0.0),
    ("bitonic-logistic-n9-clamp-fp64", "bitonic", "logistic", 9, 2, 1e4, 1e4, "float64", 1e-12),
    ("bitonic-cauchy-n16-rowblocks-fp64", "bitonic", "cauchy", 16, 2, 100.0, 100.0, "float64",
     0.0),
]

_WORKER = r"""
import json, sys
import torch
import neco.method.fused_triton as ft
from neco.method.fused_loss import rank_cross_entropy
from neco.method.sorting import soft_sort
import diffsort

torch.set_num_threads(1)
out = {}
NO_GRAD = ("bitonic-cauchy-n16-fp32", "bitonic-logistic-n9-clamp-fp64")
for name, net, dist, n, rows, bs, bt, dt, eps in json.loads(sys.argv[1]):
    ft._TILE = 4 * 16 if "rowblocks" in name else 4096  # 4 rows per block: 4 blocks at n = 16
    dtype = getattr(torch, dt)
    g = torch.Generator().manual_seed(n)
    unit = torch.nn.functional.normalize
    refs = unit(torch.randn(n, 32, generator=g, dtype=torch.float64), dim=1)
    f_t = unit(torch.randn(rows, 32, generator=g, dtype=torch.float64), dim=1)
    f_s = unit(f_t + 0.4 * torch.randn(rows, 32, generator=g, dtype=torch.float64), dim=1)
    s_s, s_t = (f_s @ refs.T).to(dtype), (f_t @ refs.T).to(dtype)

    x = s_s.clone().requires_grad_()
    ce, stats = rank_cross_entropy(x, s_t, network=net, distribution=dist,
                                   steepness_student=bs, steepness_teacher=bt, art_lambda=0.25,
                                   log_eps=eps, backend="triton")
    (grad,) = torch.autograd.grad(ce.sum(), x)
    ce_ng = ce.detach()
    if name in NO_GRAD:  # each interpreted launch costs ~0.5 s: check the no-grad kernel twice
        with torch.no_grad():
            ce_ng, _ = rank_cross_entropy(s_s, s_t, network=net, distribution=dist,
                                          steepness_student=bs, steepness_teacher=bt,
                                          art_lambda=0.25, log_eps=eps, backend="triton")

    def reference(sort):
        xr = s_s.clone().requires_grad_()
        _, p = sort(xr, bs)
        with torch.no_grad():
            _, q = sort(s_t, bt)
        log_p = p.clamp_min(eps).log() if eps > 0 else p.log()
        cr = -(q * log_p).sum((1, 2))
        (gr,) = torch.autograd.grad(cr.sum(), xr)
        return cr.detach(), gr, p.detach(), q

    network = diffsort.networks.get_sorting_network(net, n, "cpu")
    refs_out = {
        "diffsort": reference(
            lambda v, b: diffsort.functional.sort(network, v, b, 0.25, dist)),
        "exact": reference(lambda v, b: soft_sort(v, network=net, steepness=b,
                                                   distribution=dist, art_lambda=0.25)),
    }
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
    res = {"dtype": str(ce.dtype), "grad_dtype": str(grad.dtype), "finite": bool(
        torch.isfinite(ce).all() and torch.isfinite(grad).all()),
        "no_grad_equal": bool(torch.equal(ce_ng, ce.detach()))}
    for key, (cr, gr, p, q) in refs_out.items():
        res[f"ce_{key}"] = rel(ce.detach(), cr)
        res[f"grad_{key}"] = rel(grad, gr)
    _, _, p, q = refs_out["exact"]
    res["stats"] = max(
        rel(stats["entropy"], -(q * q.clamp_min(1e-30).log()).sum((1, 2))),
        rel(stats["p_min"], p.amin((1, 2))), rel(stats["p_rowmax_sum"], p.amax(2).sum(1)),
        rel(stats["q_rowmax_sum"], q.amax(2).sum(1)))
    out[name] = res
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(CASES)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    parsed: dict[str, dict[str, Any]] = json.loads(lines[-1][len("RESULT "):])
    return parsed


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_interpreter_matches_diffsort_and_exact(
    results: dict[str, dict[str, Any]], case: tuple[Any, ...]
) -> None:
    name, _, dist, _, _, _, _, dtype, eps = case
    res = results[name]
    assert res["finite"] and res["no_grad_equal"]
    assert res["dtype"] == res["grad_dtype"] == f"torch.{dtype}"
    tol = 1e-10 if dtype == "float64" else 1e-5
    assert res["ce_exact"] <= tol and res["grad_exact"] <= tol, res
    assert res["stats"] <= (1e-12 if dtype == "float64" else 1e-5), res
    d_tol = tol
    if dist == "gaussian":
        d_tol = 1e-6  # diffsort's backward rounds sigma = 1/beta to fp32
    if eps > 0:
        d_tol = 1e-6  # near-hard sort: diffsort's matmul rounding, see test_fused_loss
    assert res["ce_diffsort"] <= d_tol and res["grad_diffsort"] <= d_tol, res
