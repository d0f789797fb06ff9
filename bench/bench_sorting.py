"""CPU benchmark: ``neco.method.sorting.soft_sort`` vs ``diffsort`` 0.2.0 (method.md §14.3, §14.6).

Run from the repository root::

    python -m bench.bench_sorting [--repeats 5] [--csv bench/results/sorting_cpu.csv]
                                  [--md bench/results/sorting_cpu.md]

Both implementations run in the same process, interleaved, on 1 thread. Cases:

* ``sort``: bitonic, cauchy, steepness 100, fp32, loss ``sum(P * W)`` for a fixed random W;
  forward + backward. Rows R per n are chosen so that diffsort needs about a second or two.
* ``neco``: n = 49, R = 64 * 49 queries: teacher sort under no_grad + student sort with grad
  + cross-entropy ``-mean(sum_k Q log P)`` + backward (method.md §9), on cosine-like inputs.

Metrics: time = process CPU time of forward + backward, minimum over repeats; ``saved`` =
bytes autograd keeps for backward during the sort calls (saved_tensors_hooks, one count per
storage); ``peak_rss`` = growth of the peak resident set during one forward + backward, measured
in a fresh subprocess (``/proc/self/clear_refs`` resets the high-water mark). Both files are
rewritten whole.

For the loss, ``bench/bench_loss.py`` supersedes the ``neco`` case here: it times the whole
paper-size step (10 pairs, R = 31,360), splits user and system time, and adds the fused path.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from neco.config.method import SortNetwork
from neco.io import write_text
from neco.method.sorting import soft_sort
from neco.method.sorting_networks import build_network

STEEPNESS, DIST, LAMBDA = 100.0, "cauchy", 0.25
SORT_CASES = ((16, 4096), (49, 3136), (64, 1024), (128, 256), (256, 32))  # (n, rows R)
NECO_CASE = (49, 64 * 49)

Sorter = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _sorter(impl: str, n: int) -> Sorter:
    if impl == "ours":
        return lambda x, beta: soft_sort(x, network="bitonic", steepness=beta, distribution=DIST,
                                         art_lambda=LAMBDA)
    import diffsort  # test/bench-only reference, imported lazily

    net = diffsort.networks.get_sorting_network("bitonic", n, "cpu")
    return lambda x, beta: diffsort.functional.sort(net, x, beta, LAMBDA, DIST)


def _inputs(case: str, n: int, rows: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if case == "sort":
        return {"x": torch.randn(rows, n, generator=g), "w": torch.randn(rows, n, n, generator=g)}
    feats = torch.nn.functional.normalize(torch.randn(rows, 256, generator=g), dim=1)
    refs = torch.nn.functional.normalize(torch.randn(rows // 49, n, 256, generator=g), dim=2)
    noisy = torch.nn.functional.normalize(feats + 0.3 * torch.randn(rows, 256, generator=g), dim=1)

    def sim(f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqd,bnd->bqn", f.view(-1, 49, 256), refs).reshape(rows, n)

    return {"x": sim(feats), "t": sim(noisy)}


class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves inside the context."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return t

    def total(self) -> int:
        return sum(self.storages.values())


def _step(case: str, sort: Sorter, data: dict[str, torch.Tensor],
          counter: _SavedBytes | None = None) -> torch.Tensor:
    """One forward + backward; returns the student P (detached)."""
    x = data["x"].clone().requires_grad_(True)
    if case == "neco":
        with torch.no_grad():
            _, q = sort(data["t"], STEEPNESS)
    hooks = (torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t)
             if counter is not None else None)
    if hooks is not None:
        with hooks:
            _, p = sort(x, STEEPNESS)
    else:
        _, p = sort(x, STEEPNESS)
    if case == "neco":
        loss = -(q * torch.log(p)).sum(-1).mean()
    else:
        loss = (p * data["w"]).sum()
    loss.backward()
    return p.detach()


def _rss_worker(case: str, impl: str, n: int, rows: int) -> None:
    """Subprocess body: peak-RSS growth (MB) of one forward + backward, printed as JSON."""
    torch.set_num_threads(1)
    data, sort = _inputs(case, n, rows), _sorter(impl, n)
    build_network(SortNetwork.BITONIC, n)

    def rss_kb(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before, read_peak = rss_kb("VmRSS:"), lambda: rss_kb("VmHWM:")
    except OSError:  # fall back to the lifetime peak (may under-report)
        before = rss_kb("VmRSS:")
        read_peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    _step(case, sort, data)
    print(json.dumps({"peak_rss_mb": (read_peak() - before) / 1024}))


def _peak_rss(case: str, impl: str, n: int, rows: int) -> float:
    cmd = [sys.executable, "-m", "bench.bench_sorting", "--rss-worker", case, impl, str(n),
           str(rows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def _measure(case: str, n: int, rows: int, repeats: int) -> list[dict[str, Any]]:
    data = _inputs(case, n, rows)
    sorters = {impl: _sorter(impl, n) for impl in ("ours", "diffsort")}
    best = {impl: float("inf") for impl in sorters}
    perms = {}
    for rep in range(repeats + 1):  # round 0 warms up
        for impl, sort in sorters.items():
            t0 = time.process_time()
            perms[impl] = _step(case, sort, data)
            if rep:
                best[impl] = min(best[impl], time.process_time() - t0)
    dp = (perms["ours"] - perms["diffsort"]).abs().max().item()
    out = []
    for impl, sort in sorters.items():
        counter = _SavedBytes()
        _step(case, sort, data, counter)
        out.append({
            "case": case, "impl": impl, "network": "bitonic", "distribution": DIST,
            "steepness": STEEPNESS, "n": n, "rows": rows,
            "layers": len(build_network(SortNetwork.BITONIC, n).layers), "repeats": repeats,
            "time_ms": round(best[impl] * 1e3, 2),
            "us_per_row": round(best[impl] * 1e6 / rows, 2),
            "saved_mb": round(counter.total() / 2**20, 2),
            "saved_kb_per_row": round(counter.total() / 1024 / rows, 2),
            "peak_rss_mb": round(_peak_rss(case, impl, n, rows), 1),
            "max_abs_dP_vs_diffsort": f"{dp:.1e}",
        })
        print(json.dumps(out[-1]), flush=True)
    return out


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    import diffsort  # noqa: F401

    version = getattr(sys.modules["diffsort"], "__version__", "0.2.0")
    return (f"{model}, {os.cpu_count()} logical CPUs (shared, noisy), {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, diffsort {version}, "
            f"torch threads {torch.get_num_threads()}, glibc malloc")


def _markdown(rows: list[dict[str, Any]], repeats: int) -> str:
    lines = [
        "# Differentiable sort: neco.method.sorting vs diffsort (CPU)", "",
        "Generated by `python -m bench.bench_sorting`; do not edit.", "",
        f"Machine: {_machine()}.", "",
        f"Bitonic network, cauchy, steepness {STEEPNESS:g}, fp32. Time: process CPU time of "
        f"forward + backward, minimum of {repeats} repeats. Saved: bytes autograd keeps for "
        "backward in the sort (one count per storage). Peak RSS: growth of the resident-set "
        "high-water mark during one forward + backward in a fresh process.", "",
        "| case | n | rows R | diffsort ms | ours ms | speedup | diffsort saved MB "
        "| ours saved MB | saved ratio | diffsort peak RSS MB | ours peak RSS MB | RSS ratio "
        "| max abs dP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["case"], r["n"], r["impl"]): r for r in rows}
    for case, n, _ in [k for k in by_key if k[2] == "ours"]:
        o, d = by_key[(case, n, "ours")], by_key[(case, n, "diffsort")]
        ratio = lambda a, b: f"{a / b:.1f}x" if b > 0 else "n/a"  # noqa: E731
        lines.append(
            f"| {case} | {n} | {o['rows']} | {d['time_ms']:.1f} | {o['time_ms']:.1f} "
            f"| {ratio(d['time_ms'], o['time_ms'])} | {d['saved_mb']:.1f} | {o['saved_mb']:.1f} "
            f"| {ratio(d['saved_mb'], o['saved_mb'])} | {d['peak_rss_mb']:.0f} "
            f"| {o['peak_rss_mb']:.0f} | {ratio(d['peak_rss_mb'], o['peak_rss_mb'])} "
            f"| {o['max_abs_dP_vs_diffsort']} |")
    lines += ["", "Case `neco`: teacher sort (no grad) + student sort + cross-entropy "
              "-mean(sum_k Q log P) + backward, R = 64 x 49 queries (method.md §9, §14.3c).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--csv", default="bench/results/sorting_cpu.csv")
    parser.add_argument("--md", default="bench/results/sorting_cpu.md")
    parser.add_argument("--rss-worker", nargs=4, metavar=("CASE", "IMPL", "N", "ROWS"))
    args = parser.parse_args(argv)
    if args.rss_worker:
        case, impl, n, rows = args.rss_worker
        _rss_worker(case, impl, int(n), int(rows))
        return
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for n, r in SORT_CASES:
        rows += _measure("sort", n, r, args.repeats)
    rows += _measure("neco", *NECO_CASE, args.repeats)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(args.csv, buf.getvalue())
    write_text(args.md, _markdown(rows, args.repeats))


if __name__ == "__main__":
    main()
