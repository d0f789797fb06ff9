"""Fused NeCo rank cross-entropy on the CPU: a small C kernel, compiled on first use (D4, §14.3).

One call handles R queries. Per query (row of similarities, length n) the kernel runs the
teacher's and the student's relaxed sorting network on the values (method.md §8), builds the
teacher's Q and the student's P in a cache-resident wire-major buffer (``n' x n`` each), takes
``ce = -sum_{r,k} Q[r,k] log P[r,k]`` (§9) and back-propagates it to the student's row, so that
no ``n x n`` matrix of more than one query ever exists. Per query it keeps, for the backward,
only the student's per-comparator column differences restricted to the rows a bitonic block can
reach (method.md §14.3 "block-diagonal skipping": ~47 KB at n = 49, L2-resident) and the
per-comparator value-path scalars; everything is reused for the next query.

The gradient is computed in the same call (it is an n-vector per query, the Jacobian of a
scalar), so the autograd wrapper (:mod:`neco.method.fused_loss`) keeps only ``(R, n)`` for
backward and never re-runs a sort. Comparator arithmetic follows diffsort's order of operations
(``new_lo = w_lo*a + w_hi*b``) and the exact path's column update (``X_lo += c (X_lo - X_hi)``,
``c = w_lo - 1``; :mod:`neco.method.sorting`); the derivative of each relaxation F is written
out in closed form (the exact path differentiates the same formulas with autograd).

The C source below is built with the system C compiler (``$CC``, else ``cc``) into
``$NECO_KERNEL_CACHE`` (default ``~/.cache/neco/kernels``), keyed by a hash of the source, the
compiler and the host CPU, written atomically so concurrent processes (DDP ranks, test workers)
share it. Without a compiler :func:`cpu_kernel_available` is False and the caller falls back to
the chunked torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from neco.config.method import SortDistribution, SortNetwork
from neco.method.sorting_networks import build_network

__all__ = ["STAT_COLUMNS", "cpu_kernel_available", "cpu_kernel_error", "rank_ce_cpu"]

# Per-query outputs, in this column order: the cross-entropy sum over (r, k), the teacher's
# entropy sum H(Q) (log clamped at 1e-30), the smallest P entry, and the sums over references r
# of max_k P[r, k] and max_k Q[r, k].
STAT_COLUMNS = ("ce", "entropy", "p_min", "p_rowmax_sum", "q_rowmax_sum")

_DIST_CODE = {
    SortDistribution.CAUCHY: 0, SortDistribution.LOGISTIC: 1, SortDistribution.LOGISTIC_PHI: 2,
    SortDistribution.RECIPROCAL: 3, SortDistribution.GAUSSIAN: 4, SortDistribution.OPTIMAL: 5,
}
_MIN_ROWS_PER_THREAD = 64  # below this, extra threads cost more than they save

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* float32 atan and log written branch-free so that the loops using them vectorise (glibc's
   scalar atanf/logf dominated the kernel). Cephes' atanf and logf: <= 3 ulp and <= 1 ulp. */
static inline float atan_f32(float x) {
  const float ax = fabsf(x);
  const int big = ax > 2.414213562373095f, mid = ax > 0.4142135623730950f;
  const float num = big ? -1.0f : ax - 1.0f, den = big ? ax : ax + 1.0f;
  const float q = num / den;
  const float z = mid ? q : ax;
  const float y0 = big ? 1.57079632679489662f : (mid ? 0.785398163397448310f : 0.0f);
  const float z2 = z * z;
  const float p = (((8.05374449538e-2f * z2 - 1.38776856032e-1f) * z2 + 1.99777106478e-1f) * z2
                   - 3.33329491539e-1f) * z2 * z + z;
  return copysignf(y0 + p, x);
}

static inline float log_f32(float x) {  /* x >= 0; subnormals rescaled; 0 (and below) -> -inf */
  const int sub = x < 1.17549435e-38f;
  const float xs = sub ? x * 8388608.0f : x;
  uint32_t bits;
  memcpy(&bits, &xs, 4);
  int e = (int)((bits >> 23) & 0xff) - 126;
  bits = (bits & 0x807fffffu) | 0x3f000000u;
  float m;
  memcpy(&m, &bits, 4);  /* xs = m * 2^e, m in [0.5, 1) */
  const int lowm = m < 0.707106781186547524f;
  e -= lowm + 23 * sub;
  const float f = (lowm ? m + m : m) - 1.0f, z = f * f;
  float y = ((((((((7.0376836292e-2f * f - 1.1514610310e-1f) * f + 1.1676998740e-1f) * f
            - 1.2420140846e-1f) * f + 1.4249322787e-1f) * f - 1.6668057665e-1f) * f
            + 2.0000714765e-1f) * f - 2.4999993993e-1f) * f + 3.3333331174e-1f) * f * z;
  const float fe = (float)e;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  const float r = f + y + 0.693359375f * fe;
  return x > 0.0f ? r : -INFINITY;
}

static inline double atan_f64(double x) { return atan(x); }
static inline double log_f64(double x) { return log(x); }
#define exp_f32 expf
#define erf_f32 erff
#define pow_f32 powf
#define fabs_f32 fabsf
#define exp_f64 exp
#define erf_f64 erf
#define pow_f64 pow
#define fabs_f64 fabs
"""

# The kernel, written once: REAL and SFX are replaced by (float, f32) and (double, f64).
_BODY = r"""
/* alpha[c] = F(beta * delta[c]) and slope[c] = dF/d(delta) for one layer's m comparators. */
static void alphas_SFX(int m, const REAL *delta, REAL beta, int dist, REAL lam, REAL *alpha,
                       REAL *slope) {
  const REAL inv_pi = (REAL)0.318309886183790671538;
  switch (dist) {
  case 0:  /* cauchy */
#pragma omp simd
    for (int c = 0; c < m; ++c) {
      const REAL v = beta * delta[c];
      alpha[c] = atan_SFX(v) * inv_pi + (REAL)0.5;
      slope[c] = beta * inv_pi / ((REAL)1 + v * v);
    }
    return;
  case 1:  /* logistic */
    for (int c = 0; c < m; ++c) {
      const REAL a = (REAL)1 / ((REAL)1 + exp_SFX(-(delta[c] * beta)));
      alpha[c] = a;
      slope[c] = beta * a * ((REAL)1 - a);
    }
    return;
  case 2:  /* logistic_phi: sigmoid(beta delta / (|delta| + 1e-10)^lambda) */
    for (int c = 0; c < m; ++c) {
      const REAL ad = fabs_SFX(delta[c]) + (REAL)1e-10, s = pow_SFX(ad, lam);
      const REAL a = (REAL)1 / ((REAL)1 + exp_SFX(-(delta[c] * beta / s)));
      alpha[c] = a;
      slope[c] = a * ((REAL)1 - a) * beta / s * ((REAL)1 - lam * fabs_SFX(delta[c]) / ad);
    }
    return;
  case 3:  /* reciprocal */
    for (int c = 0; c < m; ++c) {
      const REAL v = beta * delta[c], den = (REAL)2 + fabs_SFX(v);
      alpha[c] = (REAL)0.5 * (v / den + (REAL)1);
      slope[c] = beta / (den * den);
    }
    return;
  case 4:  /* gaussian, diffsort's order of operations: delta / (1 / beta) / sqrt(2) */
    for (int c = 0; c < m; ++c) {
      const REAL v = beta * delta[c];
      alpha[c] = (REAL)0.5 + (REAL)0.5 * erf_SFX(delta[c] / ((REAL)1 / beta)
                                                 / (REAL)1.41421356237309504880);
      slope[c] = beta * (REAL)0.398942280401432677940 * exp_SFX((REAL)-0.5 * v * v);
    }
    return;
  default:  /* optimal */
    for (int c = 0; c < m; ++c) {
      const REAL v = beta * delta[c], av = fabs_SFX(v);
      const REAL side = (REAL)(v > (REAL)0.25) - (REAL)(v < (REAL)-0.25);
      const REAL cl = v < (REAL)-0.25 ? (REAL)-0.25 : (v > (REAL)0.25 ? (REAL)0.25 : v);
      alpha[c] = cl + (REAL)0.5 + side * ((REAL)0.25 - (REAL)1 / (REAL)16 / (av + (REAL)1e-10));
      slope[c] = av <= (REAL)0.25 ? beta
               : beta / (REAL)16 / ((av + (REAL)1e-10) * (av + (REAL)1e-10));
    }
    return;
  }
}

/* One network's value path on x (wires), in place. Per comparator: coef = c = w_lo - 1 and,
   when xd is given, x_lo - x_hi before the update and slope = dc / d(x_hi - x_lo). */
static void values_SFX(REAL *x, int L, const int *lstart, const int *lo, const int *hi,
                       const unsigned char *desc, REAL beta, int dist, REAL lam, REAL *coef,
                       REAL *xd, REAL *slope, REAL *tmp) {
  for (int l = 0; l < L; ++l) {
    const int c0 = lstart[l], m = lstart[l + 1] - c0;
    REAL *dl = tmp, *al = tmp + m, *sl = tmp + 2 * m;
    for (int k = 0; k < m; ++k) dl[k] = x[hi[c0 + k]] - x[lo[c0 + k]];
    alphas_SFX(m, dl, beta, dist, lam, al, sl);
    for (int k = 0; k < m; ++k) {
      const int c = c0 + k;
      const REAL a = x[lo[c]], b = x[hi[c]], alpha = al[k], alpha1 = (REAL)1 - alpha;
      const REAL wl = desc[c] ? alpha1 : alpha, wh = desc[c] ? alpha : alpha1;
      x[lo[c]] = wl * a + wh * b;
      x[hi[c]] = wh * a + wl * b;
      coef[c] = -wh;
      if (xd) {
        xd[c] = a - b;
        slope[c] = desc[c] ? -sl[k] : sl[k];
      }
    }
  }
}

int neco_rank_ce_SFX(long R, int n, int wires, int L, const int *lstart, const int *lo,
                     const int *hi, const unsigned char *desc, const int *rlo, const int *rhi,
                     const long *doff, long dtot, int dist, double lam_, double beta_s_,
                     double beta_t_, double eps_, const REAL *ss, const REAL *st, REAL *stats,
                     REAL *grad) {
  const int pad = wires - n, C = lstart[L];
  const REAL lam = (REAL)lam_, beta_s = (REAL)beta_s_, beta_t = (REAL)beta_t_, eps = (REAL)eps_;
  const size_t cells = (size_t)wires * (size_t)n;
  const size_t need = 2 * cells + (size_t)dtot + 5 * (size_t)C + 2 * (size_t)wires
                      + 2 * (size_t)n + 3 * (size_t)wires;
  REAL *buf = (REAL *)malloc(need * sizeof(REAL));
  if (!buf) return -1;
  REAL *P = buf, *Q = P + cells, *D = Q + cells, *cs = D + dtot, *ct = cs + C, *xd = ct + C;
  REAL *sl = xd + C, *gw = sl + C, *x = gw + C, *gx = x + wires, *pmax = gx + wires;
  REAL *qmax = pmax + n, *tmp = qmax + n;
  for (long q = 0; q < R; ++q) {
    const REAL *s_row = ss + q * n, *t_row = st + q * n;
    /* value paths: the teacher's coefficients; the student's plus its backward scalars */
    for (int i = 0; i < n; ++i) x[pad + i] = t_row[i];
    values_SFX(x, L, lstart, lo, hi, desc, beta_t, dist, lam, ct, NULL, NULL, tmp);
    for (int i = 0; i < n; ++i) x[pad + i] = s_row[i];
    values_SFX(x, L, lstart, lo, hi, desc, beta_s, dist, lam, cs, xd, sl, tmp);
    /* Q and P from the identity, wire-major (row w: inputs 0..n-1); per comparator only the
       input rows its group can hold; the student's column differences are kept in D */
    memset(P, 0, 2 * cells * sizeof(REAL));
    for (int i = 0; i < n; ++i) {
      P[(size_t)(pad + i) * n + i] = 1;
      Q[(size_t)(pad + i) * n + i] = 1;
    }
    for (int c = 0; c < C; ++c) {
      const REAL kt = ct[c], ks = cs[c];
      REAL *restrict qi = Q + (size_t)lo[c] * n, *restrict qj = Q + (size_t)hi[c] * n;
      REAL *restrict pi = P + (size_t)lo[c] * n, *restrict pj = P + (size_t)hi[c] * n;
      REAL *restrict d = D + doff[c];
      const int r0 = rlo[c], r1 = rhi[c];
#pragma omp simd
      for (int r = r0; r < r1; ++r) {
        const REAL e = qi[r] - qj[r], f = pi[r] - pj[r];
        qi[r] += kt * e;
        qj[r] -= kt * e;
        d[r - r0] = f;
        pi[r] += ks * f;
        pj[r] -= ks * f;
      }
    }
    /* cross-entropy and statistics; dCE/dP = -Q/P (0 where P < eps clamps) written over Q */
    REAL ce = 0, hq = 0, pmin = INFINITY;
    for (int i = 0; i < n; ++i) pmax[i] = qmax[i] = -INFINITY;
    memset(Q, 0, (size_t)pad * n * sizeof(REAL));
    for (int w = pad; w < wires; ++w) {
      REAL *restrict pw = P + (size_t)w * n, *restrict qw = Q + (size_t)w * n;
#pragma omp simd reduction(+:ce, hq) reduction(min:pmin)
      for (int r = 0; r < n; ++r) {
        const REAL p = pw[r], t = qw[r];
        const int live = !(eps > 0) || p >= eps;
        ce -= t * log_SFX(live ? p : eps);
        hq -= t * log_SFX(t > (REAL)1e-30 ? t : (REAL)1e-30);
        pmin = p < pmin ? p : pmin;
        pmax[r] = p > pmax[r] ? p : pmax[r];
        qmax[r] = t > qmax[r] ? t : qmax[r];
        qw[r] = live ? -t / p : (REAL)0;
      }
    }
    REAL psum = 0, qsum = 0;
    for (int i = 0; i < n; ++i) {
      psum += pmax[i];
      qsum += qmax[i];
    }
    REAL *o = stats + q * 5;
    o[0] = ce;
    o[1] = hq;
    o[2] = pmin;
    o[3] = psum;
    o[4] = qsum;
    if (!grad) continue;
    /* backward through the student's permutation path: dCE/dc of every comparator */
    REAL *G = Q;
    for (int c = C - 1; c >= 0; --c) {
      const REAL ks = cs[c];
      REAL *restrict gi = G + (size_t)lo[c] * n, *restrict gj = G + (size_t)hi[c] * n;
      const REAL *restrict d = D + doff[c];
      const int r0 = rlo[c], r1 = rhi[c];
      REAL acc = 0;
#pragma omp simd reduction(+:acc)
      for (int r = r0; r < r1; ++r) {
        const REAL e = gi[r] - gj[r];
        acc += e * d[r - r0];
        gi[r] += ks * e;
        gj[r] -= ks * e;
      }
      gw[c] = acc;
    }
    /* backward through the value path: c depends on delta = x_hi - x_lo of its inputs */
    for (int w = 0; w < wires; ++w) gx[w] = 0;
    for (int c = C - 1; c >= 0; --c) {
      const REAL ev = gx[lo[c]] - gx[hi[c]];
      const REAL gd = (gw[c] + ev * xd[c]) * sl[c];
      gx[lo[c]] += cs[c] * ev - gd;
      gx[hi[c]] += gd - cs[c] * ev;
    }
    for (int i = 0; i < n; ++i) grad[q * n + i] = gx[pad + i];
  }
  free(buf);
  return 0;
}
"""

_SOURCE = _PRELUDE + "".join(
    _BODY.replace("REAL", real).replace("SFX", sfx)
    for real, sfx in (("float", "f32"), ("double", "f64"))
)


@dataclass(frozen=True)
class _Tables:
    """Flat comparator tables of a network, in layer order (ctypes-ready int32/uint8/int64)."""

    wires: int
    layer_start: Tensor  # (L + 1,) first comparator of each layer, then the total
    lo: Tensor
    hi: Tensor
    desc: Tensor
    row_lo: Tensor  # first input row a comparator's columns can hold mass for
    row_hi: Tensor  # one past the last such row
    offset: Tensor  # start of the comparator's column differences in the backward buffer
    total: int


@functools.lru_cache(maxsize=64)
def _tables(network: SortNetwork, n: int) -> _Tables:
    """Comparators with the input rows each can touch (bitonic block b: groups of 2^(b+1))."""
    plan = build_network(network, n)
    lo, hi, desc, rlo, rhi, starts = [], [], [], [], [], [0]
    for layer in plan.layers:
        starts.append(starts[-1] + layer.size)
        g = layer.group_size
        for a, b, d in zip(layer.lo, layer.hi, layer.descending, strict=True):
            base = (a // g) * g - plan.pad  # padded input index of the group's first wire
            lo.append(a)
            hi.append(b)
            desc.append(d)
            rlo.append(max(base, 0))
            rhi.append(min(base + g, n))
    spans = [b - a for a, b in zip(rlo, rhi, strict=True)]
    offsets = [0]
    for s in spans:
        offsets.append(offsets[-1] + s)
    i32 = torch.int32
    return _Tables(
        wires=plan.num_wires, layer_start=torch.tensor(starts, dtype=i32),
        lo=torch.tensor(lo, dtype=i32), hi=torch.tensor(hi, dtype=i32),
        desc=torch.tensor(desc, dtype=torch.uint8), row_lo=torch.tensor(rlo, dtype=i32),
        row_hi=torch.tensor(rhi, dtype=i32), offset=torch.tensor(offsets[:-1], dtype=torch.int64),
        total=offsets[-1],
    )


def _cache_dir() -> Path:
    root = os.environ.get("NECO_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "neco" / "kernels"


def _cpu_signature() -> str:
    """Host CPU identity for the cache key (the library is built with ``-march=native``)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str]:
    """Build (once per source, compiler and CPU) and load the kernel; ``(lib, error)``."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler found (set CC, or install cc/gcc)"
    flags = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
             "-shared", "-fPIC"]
    key = hashlib.sha256("\0".join(
        [_SOURCE, compiler, *flags, _cpu_signature(), platform.machine()]).encode()).hexdigest()
    path = _cache_dir() / f"neco_fused_rank_ce_{key[:16]}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src, out = Path(tmp) / "kernel.c", Path(tmp) / "kernel.so"
                src.write_text(_SOURCE)
                done = subprocess.run([compiler, *flags, "-o", str(out), str(src), "-lm"],
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    return None, f"{compiler} failed: {done.stderr.strip()[-400:]}"
                os.replace(out, path)  # atomic: concurrent builders write the same bytes
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        return None, f"cannot build or load {path}: {err}"
    ptr, i32, i64, f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_double
    for sfx in ("f32", "f64"):
        fn = getattr(lib, f"neco_rank_ce_{sfx}")
        fn.restype = i32
        fn.argtypes = [i64, i32, i32, i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i32, f64, f64,
                       f64, f64, ptr, ptr, ptr, ptr]
    return lib, ""


def cpu_kernel_available() -> bool:
    """Whether the compiled CPU kernel can be used (builds it on the first call)."""
    return _library()[0] is not None


def cpu_kernel_error() -> str:
    """Why the kernel is unavailable ('' when it is available)."""
    return _library()[1]


def rank_ce_cpu(
    s_student: Tensor, s_teacher: Tensor, *, network: SortNetwork, distribution: SortDistribution,
    steepness_student: float, steepness_teacher: float, art_lambda: float, log_eps: float,
    want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-query rank cross-entropy and its gradient with the compiled kernel.

    Args:
        s_student: ``(R, n)`` student similarities, float32 or float64, contiguous CPU.
        s_teacher: ``(R, n)`` teacher similarities, same dtype.
        network, distribution, steepness_student, steepness_teacher, art_lambda, log_eps:
            as in :func:`neco.method.fused_loss.rank_cross_entropy`.
        want_grad: also return ``d ce / d s_student``.

    Returns:
        ``(stats (R, 5), grad (R, n) or None)``; stats columns :data:`STAT_COLUMNS`.
    """
    lib, err = _library()
    if lib is None:
        raise RuntimeError(f"fused CPU kernel unavailable: {err}")
    rows, n = s_student.shape
    tab = _tables(network, n)
    sfx = "f64" if s_student.dtype == torch.float64 else "f32"
    fn = getattr(lib, f"neco_rank_ce_{sfx}")
    ss, st = s_student.contiguous(), s_teacher.contiguous()
    stats = ss.new_empty(rows, len(STAT_COLUMNS))
    grad = torch.empty_like(ss) if want_grad else None

    def run(start: int, stop: int) -> int:
        size = ss.element_size()
        gptr = grad.data_ptr() + start * n * size if grad is not None else None
        return int(fn(
            stop - start, n, tab.wires, tab.layer_start.numel() - 1, tab.layer_start.data_ptr(),
            tab.lo.data_ptr(), tab.hi.data_ptr(),
            tab.desc.data_ptr(), tab.row_lo.data_ptr(), tab.row_hi.data_ptr(),
            tab.offset.data_ptr(), tab.total, _DIST_CODE[distribution], art_lambda,
            steepness_student, steepness_teacher, log_eps, ss.data_ptr() + start * n * size,
            st.data_ptr() + start * n * size, stats.data_ptr() + start * stats.shape[1] * size,
            gptr))

    threads = max(1, min(torch.get_num_threads(), rows // _MIN_ROWS_PER_THREAD))
    bounds = [rows * i // threads for i in range(threads + 1)]
    if threads == 1:
        codes = [run(0, rows)]
    else:  # ctypes releases the GIL: one slice of queries per torch thread
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(run, bounds[:-1], bounds[1:]))
    if any(codes):
        raise MemoryError(f"fused CPU kernel: cannot allocate its per-query buffers (n = {n})")
    return stats, grad
