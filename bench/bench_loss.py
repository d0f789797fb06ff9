"""CPU benchmark of the NeCo sort and loss: diffsort vs the exact path vs the fused path (issue 13).

Run from the repository root (about 4 minutes on one core)::

    python -m bench.bench_loss [--repeats 3] [--json bench/results/loss_cpu.json]
                               [--md bench/results/loss_cpu.md]

Every measurement runs in a fresh subprocess on 1 torch thread, so peak RSS and page faults
belong to that case alone. Per case: a warm-up call on a few rows (network construction,
kernel build), then ``--repeats`` timed forward + backward passes. Reported:

* process CPU time = user + system (``getrusage``), minimum over repeats, with its split (the
  system part is page faults: the batched exact call maps and faults in GBs of fresh memory);
* wall time, minimum over repeats;
* peak RSS: growth of the resident high-water mark during the first timed pass
  (``/proc/self/clear_refs``; the warm-up uses 4 rows, so it leaves little memory in the
  heap), and the minor page faults of that pass;
* saved: bytes autograd keeps for backward (distinct storages, ``saved_tensors_hooks``).

Cases (bitonic, cauchy, steepness 100, fp32, cosine-like inputs):

* ``sort``: the sort alone, loss ``sum(P * W)``; diffsort vs exact (the fused path never forms P);
* ``loss``: teacher sort (no grad) + student sort + ``-sum Q log P`` + backward, from
  similarities ``(R, n)``; diffsort, exact, fused (the C kernel) and fused_torch (the fused
  path's chunked torch fallback); n in {16, 49, 64, 128, 256};
* ``step``: the whole NeCo loss at the paper size, ``neco_loss`` from features: 10 crop pairs x
  64 images x 49 queries (R = 31,360) x 49 references, d = 256, forward + backward. ``exact`` is
  one batched call, ``exact_per_pair`` and ``diffsort`` loop over the 10 pairs (forward +
  backward each, like the official code), ``fused`` and ``fused_torch`` are one call.

Both result files are rewritten whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import neco.method.fused_loss as fused_loss
from neco.config.method import LossConfig, LossImplementation, Similarity, SortDistribution
from neco.io import write_json, write_text
from neco.method.fused_loss import rank_cross_entropy, resolve_backend
from neco.method.loss import neco_loss, similarities
from neco.method.sorting import SortNetwork, soft_sort
from neco.method.sorting_networks import build_network

BETA, DIST, LAMBDA = 100.0, "cauchy", 0.25
SORT_CASES = ((16, 4096), (49, 3136), (64, 1024), (128, 256), (256, 32))  # (n, rows R)
LOSS_CASES = ((16, 3136), (49, 3136), (64, 1024), (128, 256), (256, 32))
STEP = {"pairs": 10, "batch": 64, "queries": 49, "n": 49, "dim": 256}
IMPLS = {"sort": ("diffsort", "exact"), "loss": ("diffsort", "exact", "fused", "fused_torch"),
         "step": ("diffsort", "exact", "exact_per_pair", "fused", "fused_torch")}
Step = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _inputs(case: str, n: int, rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if case == "step":
        shape = (STEP["pairs"], STEP["batch"], STEP["queries"], STEP["dim"])
        f_t = torch.randn(shape, generator=g)
        return {"f_s": f_t + 0.5 * torch.randn(shape, generator=g), "f_t": f_t,
                "refs": torch.randn(shape[:2] + (n, STEP["dim"]), generator=g)}
    unit = torch.nn.functional.normalize
    per_image = next(q for q in (49, 16, 1) if rows % q == 0)  # queries sharing references
    groups = rows // per_image
    refs = unit(torch.randn(groups, n, 256, generator=g), dim=2)
    f_t = unit(torch.randn(groups, per_image, 256, generator=g), dim=2)
    f_s = unit(f_t + 0.3 * torch.randn(f_t.shape, generator=g), dim=2)
    out = {"x": torch.bmm(f_s, refs.transpose(1, 2)).reshape(rows, n),
           "t": torch.bmm(f_t, refs.transpose(1, 2)).reshape(rows, n)}
    if case == "sort":
        out["w"] = torch.randn(rows, n, n, generator=g)
    return out


def _diffsort(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import diffsort  # bench/test-only reference

    net = diffsort.networks.get_sorting_network("bitonic", n, "cpu")
    return lambda x: diffsort.functional.sort(net, x, BETA, LAMBDA, DIST)[1]


def _exact(x: torch.Tensor) -> torch.Tensor:
    return soft_sort(x, network="bitonic", steepness=BETA, distribution=DIST,
                     art_lambda=LAMBDA)[1]


def _cfg(impl: LossImplementation) -> LossConfig:
    return LossConfig(roi_k=7, n_refs=STEP["n"], similarity=Similarity.COSINE,
                      sort_network=SortNetwork.BITONIC, sort_distribution=SortDistribution.CAUCHY,
                      art_lambda=LAMBDA, steepness_student=BETA, steepness_teacher=BETA,
                      log_eps=0.0, queue=False, queue_length=8192, queue_push_per_image=10,
                      crops_for_assign=[0, 1], use_teacher=True, implementation=impl)


def _make_step(case: str, impl: str, n: int) -> Step:
    """One forward + backward of ``case`` with ``impl``; returns loss and input gradient."""
    if case == "sort":
        sort = _diffsort(n) if impl == "diffsort" else _exact

        def sort_step(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            x = d["x"].clone().requires_grad_()
            loss = (sort(x) * d["w"]).sum()
            loss.backward()
            return {"loss": loss.detach(), "grad": x.grad}

        return sort_step
    if case == "loss":
        def loss_step(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            x = d["x"].clone().requires_grad_()
            if impl.startswith("fused"):
                ce, _ = rank_cross_entropy(x, d["t"], network="bitonic", distribution=DIST,
                                           steepness_student=BETA, steepness_teacher=BETA,
                                           art_lambda=LAMBDA, log_eps=0.0,
                                           backend="torch" if impl == "fused_torch" else "cpu")
            else:
                sort = _diffsort(n) if impl == "diffsort" else _exact
                with torch.no_grad():
                    q = sort(d["t"])
                ce = -(q * torch.log(sort(x))).sum((1, 2))
            loss = ce.sum() / ce.numel() / n
            loss.backward()
            return {"loss": loss.detach(), "grad": x.grad}

        return loss_step
    sort = _diffsort(n) if impl == "diffsort" else None

    def pair_loss(f_s: torch.Tensor, f_t: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        if sort is None:
            return neco_loss(f_s, f_t, refs, _cfg(LossImplementation.EXACT))[0]
        s_s = similarities(f_s.flatten(0, 1), refs.flatten(0, 1), Similarity.COSINE)
        with torch.no_grad():
            s_t = similarities(f_t.flatten(0, 1), refs.flatten(0, 1), Similarity.COSINE)
            q = sort(s_t.reshape(-1, n))
        return -(q * torch.log(sort(s_s.reshape(-1, n)))).sum(-1).mean()

    def neco_step(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f_s = d["f_s"].clone().requires_grad_()
        if impl in ("exact", "fused", "fused_torch"):
            chosen = LossImplementation(impl.removesuffix("_torch"))
            loss = neco_loss(f_s, d["f_t"], d["refs"], _cfg(chosen))[0]
            loss.backward()
        else:  # one call per pair, forward + backward each (official code: a loop over pairs)
            pairs = f_s.shape[0]
            total = torch.zeros(())
            for i in range(pairs):
                part = pair_loss(f_s[i:i + 1], d["f_t"][i:i + 1], d["refs"][i:i + 1]) / pairs
                part.backward()
                total += part.detach()
                if _COUNTER is not None:
                    _COUNTER.end_graph()
            loss = total
        return {"loss": loss.detach(), "grad": f_s.grad}

    return neco_step


class _Saved:
    """Distinct storages autograd packs for backward, summed over the graphs of a pass.

    A loop over pairs builds and frees one graph per pair; :meth:`end_graph` closes one, so
    storages whose memory the next graph reuses are still counted: the total is what a single
    graph over all pairs (the official forward, then one backward) would keep.
    """

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self.closed = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return t

    def end_graph(self) -> None:
        self.closed += sum(self.storages.values())
        self.storages.clear()

    def total(self) -> int:
        return self.closed + sum(self.storages.values())


_COUNTER: _Saved | None = None  # the active counter, for loops over pairs


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess body: warm-up, timed passes, RSS, faults, saved bytes; saves the outputs."""
    global _COUNTER
    torch.set_num_threads(1)
    case, impl, n, rows, repeats = (spec[k] for k in ("case", "impl", "n", "rows", "repeats"))
    if impl == "fused_torch":  # the fallback backend, as where no C compiler exists
        fused_loss.cpu_kernel_available = lambda: False
        warnings.simplefilter("ignore", RuntimeWarning)
    step = _make_step(case, impl, n)
    if case == "step":
        warm = {k: v[:1, :1] for k, v in _inputs(case, n, rows).items()}
    else:  # a few rows only, so that the warm-up leaves little memory behind in the heap
        warm = _inputs(case, n, min(rows, 4), seed=1)
    step(warm)
    data = _inputs(case, n, rows)
    runs = []
    for rep in range(repeats):
        counter = _Saved() if rep == 0 else None
        try:
            if rep == 0:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        rss0 = _status_kb("VmRSS:")
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if counter is not None:
            _COUNTER = counter
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                out = step(data)
            _COUNTER = None
        else:
            out = step(data)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        run = {"user_s": ru1.ru_utime - ru0.ru_utime, "sys_s": ru1.ru_stime - ru0.ru_stime,
               "wall_s": wall, "minor_faults": ru1.ru_minflt - ru0.ru_minflt}
        if rep == 0:
            run["peak_rss_mb"] = (_status_kb("VmHWM:") - rss0) / 1024
            run["saved_bytes"] = counter.total() if counter is not None else 0
            torch.save({k: v.detach() for k, v in out.items()}, spec["out"])
        runs.append(run)
        del out
    best = min(runs, key=lambda r: r["user_s"] + r["sys_s"])
    first = runs[0]
    return {
        "case": case, "impl": impl, "n": n, "rows": rows, "repeats": repeats,
        "layers": len(build_network(SortNetwork.BITONIC, n).layers),
        "backend": resolve_backend(torch.device("cpu"), n) if impl.startswith("fused") else impl,
        "cpu_s": round(best["user_s"] + best["sys_s"], 4), "user_s": round(best["user_s"], 4),
        "sys_s": round(best["sys_s"], 4), "wall_s": round(min(r["wall_s"] for r in runs), 4),
        "us_per_query": round((best["user_s"] + best["sys_s"]) * 1e6 / rows, 2),
        "minor_faults_first": first["minor_faults"],
        "peak_rss_mb": round(first["peak_rss_mb"], 1),
        "saved_mb": round(first["saved_bytes"] / 2**20, 3),
        "saved_bytes_per_query": round(first["saved_bytes"] / rows, 1),
    }


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_loss", "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec['case']}/{spec['impl']}/n={spec['n']} failed:\n"
                           f"{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _measure(case: str, n: int, rows: int, repeats: int, tmp: Path) -> list[dict[str, Any]]:
    out = []
    for impl in IMPLS[case]:
        reps = 1 if (case == "step" and impl == "diffsort") else repeats
        spec = {"case": case, "impl": impl, "n": n, "rows": rows, "repeats": reps,
                "out": str(tmp / f"{case}_{impl}_{n}.pt")}
        out.append(_run(spec))
    ref = torch.load(tmp / f"{case}_diffsort_{n}.pt")
    base = out[0]
    for row in out:
        got = torch.load(tmp / f"{case}_{row['impl']}_{n}.pt")
        row["rel_dloss_vs_diffsort"] = f"{_rel(got['loss'], ref['loss']):.1e}"
        row["rel_dgrad_vs_diffsort"] = f"{_rel(got['grad'], ref['grad']):.1e}"
        row["cpu_speedup_vs_diffsort"] = round(base["cpu_s"] / row["cpu_s"], 2)
        row["saved_ratio_vs_diffsort"] = (round(base["saved_mb"] / row["saved_mb"], 1)
                                          if row["saved_mb"] > 0 else None)
    return out


def _machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    import diffsort

    try:
        cc = subprocess.run([os.environ.get("CC") or "cc", "--version"], capture_output=True,
                            text=True, check=False).stdout.splitlines()[0]
    except (OSError, IndexError):
        cc = "none"
    return {
        "cpu": model, "logical_cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "diffsort": getattr(diffsort, "__version__", "0.2.0"), "compiler": cc,
        "torch_threads": 1, "allocator": "glibc malloc (default)",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared machine (other jobs running): times are noisy, minimum over repeats",
    }


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _markdown(res: dict[str, Any]) -> str:
    m, rows = res["machine"], res["results"]
    lines = [
        "# NeCo sort and loss on the CPU: diffsort vs exact vs fused", "",
        "Generated by `python -m bench.bench_loss`; do not edit.", "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['note']}), {m['machine']}, "
        f"Python {m['python']}, torch {m['torch']}, diffsort {m['diffsort']}, {m['compiler']}, "
        f"torch threads 1, {m['allocator']}; load average at start {m['load_average_at_start']}.",
        "",
        "Bitonic, cauchy, steepness 100, fp32. CPU = process user + system time (minimum over "
        "repeats; the split is of that pass); wall = minimum wall time; peak RSS = growth of the "
        "resident high-water mark in the first pass, in a fresh process; faults = minor page "
        "faults of that pass; saved = bytes autograd keeps for backward. Speed-up and saved "
        "ratio are diffsort / implementation. Δ = max relative difference of the loss and the "
        "input gradient vs diffsort.", "",
    ]
    acc = res["acceptance"]
    lines += ["## Acceptance (issue 13)", "",
              "| target | measured | met |", "|---|---|---|"]
    for item in acc:
        met = "yes" if item["met"] else "no"
        lines.append(f"| {item['target']} | {item['measured']} | {met} |")
    heads = ("| impl | CPU s | user s | sys s | wall s | µs/query | speed-up | saved MB "
             "| saved ratio | peak RSS MB | faults | Δloss | Δgrad |")
    sep = "|---" * 13 + "|"

    def table(case: str, n: int) -> list[str]:
        out = [heads, sep]
        for r in rows:
            if r["case"] != case or r["n"] != n:
                continue
            ratio = r["saved_ratio_vs_diffsort"]
            out.append(
                f"| {r['impl']} | {_fmt(r['cpu_s'])} | {_fmt(r['user_s'])} | {_fmt(r['sys_s'])} "
                f"| {_fmt(r['wall_s'])} | {_fmt(r['us_per_query'])} "
                f"| {r['cpu_speedup_vs_diffsort']:.1f}x | {_fmt(r['saved_mb'])} "
                f"| {'n/a' if ratio is None else f'{ratio:.0f}x'} | {_fmt(r['peak_rss_mb'])} "
                f"| {r['minor_faults_first']} | {r['rel_dloss_vs_diffsort']} "
                f"| {r['rel_dgrad_vs_diffsort']} |")
        return out

    s = STEP
    lines += ["", "## Whole NeCo loss at the paper size (forward + backward)", "",
              f"`neco_loss` from features: {s['pairs']} crop pairs x {s['batch']} images x "
              f"{s['queries']} queries = {s['pairs'] * s['batch'] * s['queries']:,} query rows, "
              f"n = {s['n']} references, d = {s['dim']}; similarities included. `exact`: one "
              "batched sort call per sorter; `exact_per_pair`, `diffsort`: one call per pair "
              "(forward + backward each); `fused` (C kernel) and `fused_torch` (its chunked torch "
              "fallback): one call. diffsort is timed once.", ""]
    lines += table("step", s["n"])
    lines += ["", "## Loss per n (teacher sort + student sort + cross-entropy + backward, from "
              "similarities)", ""]
    for n, r in LOSS_CASES:
        lines += [f"n = {n}, R = {r} queries, {len(build_network(SortNetwork.BITONIC, n).layers)}"
                  " layers:", ""] + table("loss", n) + [""]
    lines += ["## Sort alone (loss sum(P * W); the fused path never forms P)", ""]
    for n, r in SORT_CASES:
        lines += [f"n = {n}, R = {r} rows:", ""] + table("sort", n) + [""]
    lines += ["## Notes", ""] + [f"* {x}" for x in res["notes"]] + [""]
    return "\n".join(lines)


def _acceptance(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def get(case: str, impl: str, n: int) -> dict[str, Any]:
        return next(r for r in rows if (r["case"], r["impl"], r["n"]) == (case, impl, n))

    step, loss49, loss256 = (get("step", "fused", 49), get("loss", "fused", 49),
                             get("loss", "fused", 256))
    return [
        {"target": "fused vs diffsort, whole loss at NeCo size (n = 49), CPU time >= 25x",
         "measured": f"{step['cpu_speedup_vs_diffsort']:.1f}x",
         "met": step["cpu_speedup_vs_diffsort"] >= 25},
        {"target": "same, bytes saved for backward >= 100x fewer",
         "measured": f"{step['saved_ratio_vs_diffsort']:.0f}x",
         "met": (step["saved_ratio_vs_diffsort"] or 0) >= 100},
        {"target": "fused vs diffsort, loss at n = 49 from similarities (R = 3136), >= 25x",
         "measured": f"{loss49['cpu_speedup_vs_diffsort']:.1f}x; saved "
                     f"{loss49['saved_ratio_vs_diffsort']:.0f}x fewer",
         "met": loss49["cpu_speedup_vs_diffsort"] >= 25},
        {"target": "fused vs diffsort at n = 256 (loss, R = 32), CPU time >= 100x",
         "measured": f"{loss256['cpu_speedup_vs_diffsort']:.1f}x",
         "met": loss256["cpu_speedup_vs_diffsort"] >= 100},
    ]


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    def get(impl: str) -> dict[str, Any]:
        return next(r for r in rows if (r["case"], r["impl"]) == ("step", impl))

    ex, pp, fu, ft = get("exact"), get("exact_per_pair"), get("fused"), get("fused_torch")
    return [
        f"Batched exact path at the paper size: {ex['cpu_s']:.2f} s CPU of which "
        f"{ex['sys_s']:.2f} s system time ({100 * ex['sys_s'] / ex['cpu_s']:.0f}%), "
        f"{ex['minor_faults_first']:,} minor page faults in one pass: glibc returns its "
        f"multi-GB buffers to the kernel after each pass and faults them in again. One call "
        f"per pair: {pp['cpu_s']:.2f} s ({pp['sys_s']:.2f} s system).",
        f"Fused path at the paper size: {fu['cpu_s']:.3f} s CPU ({fu['sys_s']:.3f} s system), "
        f"{fu['saved_bytes_per_query']:.0f} B per query kept for backward: "
        f"{4 * STEP['n']} B are the (R, n) gradient rows of the fused function, the rest the "
        f"inputs the shared similarity (normalise + matmul) saves.",
        f"The fused CPU backend is a C kernel compiled on first use with the system compiler "
        f"(`neco/method/fused_cpu.py`); without a compiler the chunked torch backend "
        f"(`fused_torch`: the exact sort on chunks of queries, gradient per chunk) gives the "
        f"same numbers in {ft['cpu_s']:.2f} s ({ft['sys_s']:.2f} s system, peak RSS "
        f"{ft['peak_rss_mb']:.0f} MB) at the paper size, {ft['cpu_s'] / fu['cpu_s']:.1f}x the "
        f"kernel's time: the torch ops on small strided views cannot reach the kernel's "
        f"cache-resident per-query loop, hence the compiled kernel.",
        "Bytes saved for the whole loss include the cosine similarity's saved inputs "
        "(normalised features and references, ~1 KB per query at d = 256), identical for every "
        "implementation; the `loss` tables, which start from similarities, isolate the sort.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench/results/loss_cpu.json")
    parser.add_argument("--md", default="bench/results/loss_cpu.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    machine = _machine()
    started = time.time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += _measure("step", STEP["n"], STEP["pairs"] * STEP["batch"] * STEP["queries"],
                         args.repeats, Path(tmp))
        for n, r in LOSS_CASES:
            rows += _measure("loss", n, r, args.repeats, Path(tmp))
        for n, r in SORT_CASES:
            rows += _measure("sort", n, r, args.repeats, Path(tmp))
    res = {"machine": machine, "settings": {"steepness": BETA, "distribution": DIST,
                                            "network": "bitonic", "dtype": "float32",
                                            "repeats": args.repeats, "step": STEP},
           "runtime_s": round(time.time() - started, 1), "acceptance": _acceptance(rows),
           "notes": _notes(rows), "results": rows}
    write_json(args.json, res)
    write_text(args.md, _markdown(res))


if __name__ == "__main__":
    main()
