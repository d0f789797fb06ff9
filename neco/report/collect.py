"""Report stage core: collect per-eval metrics and roll them up (paper arXiv 2408.11054).

STYLE P10-P11, evaluation.md §1.7. Every eval stage writes
``<metrics-dir>/<protocol>/<dataset>.json``::

    {"protocol": "linear", "dataset": "voc", "backbone": "dinov2_vits14_xr",
     "models": {"init": {...result.to_dict()...}, "neco": {...}}}

plus ``"baseline"`` for a backbone with a paper baseline (``neco.evals.models``). ``collect``
validates those dicts into ``EvalEntry`` objects, ``rollup`` turns them into the
~20 headline leaves of ``reports/metrics.json`` (the only declared DVC metrics file).
``neco.report.document`` lays out ``reports/tables.md`` (tables in ``neco.report.tables``,
settings footnotes in ``neco.report.settings``). Everything here is pure except
``load_metrics_dir``, which only reads the JSON files it is pointed at.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Fixed orders: tables follow the paper (Table 1a clustering, Table 2 linear, Figure 2 in-context).
PROTOCOL_ORDER: tuple[str, ...] = ("overcluster", "linear", "hbird")
DATASET_ORDER: tuple[str, ...] = ("voc", "coco_things", "coco_stuff", "ade20k")
# The paper's baseline model (where the backbone has one, neco.evals.models) leads, as in the paper.
MODEL_ORDER: tuple[str, ...] = ("baseline", "init", "neco")
TRAIN_ROLLUP: tuple[tuple[str, int], ...] = (  # (summary key, decimals)
    ("initial_loss", 4), ("final_loss", 4), ("steps", 0),
)
_FRACTION = re.compile(r"^(\d+)/(\d+)$")


class ReportInputError(ValueError):
    """A report input is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class EvalEntry:
    """One eval stage's output.

    Attributes:
        protocol: e.g. ``linear``.
        dataset: e.g. ``voc``.
        backbone: backbone key, e.g. ``dinov2_vits14_xr``.
        models: model name (``init``, ``neco``, ``baseline``) -> the protocol's result dict.
        source: the file it came from (for messages).
    """

    protocol: str
    dataset: str
    backbone: str
    models: dict[str, dict[str, Any]]
    source: str


def _fail(source: str, key: str, msg: str) -> ReportInputError:
    return ReportInputError(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, source: str,
             where: str) -> Any:
    if key not in obj:
        raise _fail(source, f"{where}{key}", "missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise _fail(source, f"{where}{key}", f"expected {names}, got {value!r}")
    return value


def _fraction_value(value: Any, *, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, key, f"expected a finite number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise _fail(source, key, f"mIoU {value!r} is not a fraction in [0, 1]")
    return float(value)


def _check_result(protocol: str, res: Mapping[str, Any], *, source: str, where: str) -> None:
    """Check the fields the report reads (evaluation.md §2.6, §3.5, §4.8).

    ``miou`` may be null for overcluster (no K = C run) and hbird (fraction 1/1 not run).
    """
    nullable = (int, float, type(None)) if protocol in ("overcluster", "hbird") else (int, float)
    miou = _require(res, "miou", nullable, source=source, where=where)
    if miou is not None:
        _fraction_value(miou, source=source, key=f"{where}miou")
    _require(res, "fingerprint", str, source=source, where=where)
    _require(res, "settings", dict, source=source, where=where)
    if protocol not in ("overcluster", "hbird"):
        return
    results = _require(res, "results", list, source=source, where=where)
    if not results:
        raise _fail(source, f"{where}results", "empty list")
    for i, run in enumerate(results):
        at = f"{where}results[{i}]."
        if not isinstance(run, dict):
            raise _fail(source, at[:-1], f"expected an object, got {run!r}")
        _fraction_value(_require(run, "mean", (int, float), source=source, where=at),
                        source=source, key=f"{at}mean")
        std = run.get("std")
        if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float))):
            raise _fail(source, f"{at}std", f"expected a number or null, got {std!r}")
        if protocol == "overcluster":
            for key in ("k_requested", "k_used"):
                _require(run, key, int, source=source, where=at)
            _require(run, "matching", str, source=source, where=at)
        else:
            frac = _require(run, "fraction", str, source=source, where=at)
            if not _FRACTION.match(frac):
                raise _fail(source, f"{at}fraction", f"expected 'a/b' like '1/8', got {frac!r}")
            _require(run, "runs", list, source=source, where=at)


def collect(obj: Any, *, source: str, protocol: str | None = None,
            dataset: str | None = None) -> EvalEntry:
    """Validate one per-eval metrics dict.

    Args:
        obj: the parsed JSON.
        source: its file name, for messages.
        protocol, dataset: what the file's location says; a mismatch with the content is an
            error (a stale or misplaced file).

    Raises:
        ReportInputError: naming ``source`` and the offending key.
    """
    if not isinstance(obj, dict):
        raise _fail(source, "", f"expected a JSON object, got {type(obj).__name__}")
    proto = _require(obj, "protocol", str, source=source, where="")
    ds = _require(obj, "dataset", str, source=source, where="")
    backbone = _require(obj, "backbone", str, source=source, where="")
    for name, expected, got in (("protocol", protocol, proto), ("dataset", dataset, ds)):
        if expected is not None and expected != got:
            raise _fail(source, name, f"{got!r} does not match the file location ({expected!r})")
    models = _require(obj, "models", dict, source=source, where="")
    if not models:
        raise _fail(source, "models", "no models")
    for name, res in models.items():
        if not isinstance(res, dict):
            raise _fail(source, f"models.{name}", f"expected a result object, got {res!r}")
        _check_result(proto, res, source=source, where=f"models.{name}.")
    return EvalEntry(proto, ds, backbone, dict(models), source)


def load_metrics(
    metrics_dir: str | os.PathLike[str], *, datasets: Sequence[str], protocols: Sequence[str]
) -> list[EvalEntry]:
    """Read exactly ``<protocol>/<dataset>.json`` for the declared datasets and protocols.

    Raises:
        FileNotFoundError: a declared file is missing (naming it and the stage that writes it).
        ReportInputError: a file is not valid JSON or fails ``collect``.
    """
    root = Path(metrics_dir)
    entries = []
    for protocol in protocols:
        for dataset in datasets:
            path = root / protocol / f"{dataset}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: metrics of eval.datasets entry {dataset!r} not found "
                    f"(written by the eval_{protocol}@{dataset} stage)"
                )
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ReportInputError(f"{path}: invalid JSON: {err}") from err
            entries.append(collect(obj, source=str(path), protocol=protocol, dataset=dataset))
    return sort_entries(entries)


def _rank(order: Sequence[str], name: str) -> tuple[int, str]:
    return (order.index(name), "") if name in order else (len(order), name)


def ordered(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """``names`` in the fixed ``order`` first, then the rest alphabetically (no duplicates)."""
    return sorted(dict.fromkeys(names), key=lambda n: _rank(order, n))


def sort_entries(entries: Sequence[EvalEntry]) -> list[EvalEntry]:
    """Entries in protocol, then dataset order."""
    return sorted(entries, key=lambda e: (_rank(PROTOCOL_ORDER, e.protocol),
                                          _rank(DATASET_ORDER, e.dataset)))


def fraction_key(fraction: str) -> str:
    """``"1/8"`` -> ``"f1_8"`` (a roll-up key segment)."""
    return "f" + fraction.replace("/", "_")


def fraction_sort_key(fraction: str) -> float:
    """Larger memory first: 1/1, 1/8, 1/64, 1/128."""
    m = _FRACTION.match(fraction)
    return -int(m.group(1)) / int(m.group(2)) if m else 0.0


def gt_result(res: Mapping[str, Any]) -> dict[str, Any] | None:
    """The overcluster run at K = C (the paper's "K = GT"), or None.

    C is ``len(class_names)`` when the result records it; otherwise the first run matched with
    Hungarian (evaluation.md §3.2; a K < C "under-clustering" run is Hungarian too, hence the
    class count first).
    """
    names = res.get("class_names")
    if isinstance(names, list) and names:
        return next((dict(r) for r in res["results"] if r["k_requested"] == len(names)), None)
    return next((dict(r) for r in res["results"]
                 if str(r["matching"]).lower().startswith("hungarian")), None)


def pct(value: float) -> float:
    """Fraction -> percent with 2 decimals (roll-up precision)."""
    return round(100.0 * value, 2)


def rollup(entries: Sequence[EvalEntry], train_summary: Mapping[str, Any], *,
           train_source: str) -> dict[str, float | int]:
    """Headline leaves for ``reports/metrics.json``.

    mIoU leaves are **percent with 2 decimals** (``dvc metrics diff`` readability); Δ is NeCo
    minus init of the primary number, computed before rounding. Keys:

    * ``<protocol>.<dataset>.<model>.miou`` for linear and unknown protocols;
    * ``overcluster.<dataset>.<model>.k<k_used>.miou`` per K (K = C included);
    * ``hbird.<dataset>.<model>.f<a>_<b>.miou`` per memory fraction (mean over subsets);
    * ``<protocol>.<dataset>.delta``: NeCo - init of the primary ``miou`` (linear: the selected
      epoch; overcluster: K = C; hbird: fraction 1/1);
    * ``<protocol>.<dataset>.delta_baseline``: NeCo - baseline of the same number, where the
      file has the paper's ``baseline`` model (the Δ the paper's tables print);
    * ``train.initial_loss``, ``train.final_loss`` (4 decimals) and ``train.steps``;
      ``final_loss`` is required. Throughput is not a result: it lives in the untracked
      ``reports/timings/`` files, so the roll-up depends on params and inputs only.

    Returns:
        A flat dict with sorted keys.

    Raises:
        ReportInputError: a train-summary leaf is missing or not a finite number.
    """
    out: dict[str, float | int] = {}
    for e in entries:
        base = f"{e.protocol}.{e.dataset}"
        for model in ordered(list(e.models), MODEL_ORDER):
            res = e.models[model]
            if e.protocol == "overcluster":
                for run in res["results"]:
                    out.setdefault(f"{base}.{model}.k{run['k_used']}.miou", pct(run["mean"]))
            elif e.protocol == "hbird":
                for run in res["results"]:
                    out[f"{base}.{model}.{fraction_key(run['fraction'])}.miou"] = pct(run["mean"])
            else:
                out[f"{base}.{model}.miou"] = pct(res["miou"])
        init, neco, baseline = (e.models.get(m, {}).get("miou")
                                for m in ("init", "neco", "baseline"))
        if init is not None and neco is not None:
            out[f"{base}.delta"] = pct(neco - init)
        if baseline is not None and neco is not None:
            out[f"{base}.delta_baseline"] = pct(neco - baseline)
    if "final_loss" not in train_summary:
        raise ReportInputError(f"{train_source}: final_loss: missing")
    for key, decimals in TRAIN_ROLLUP:
        if key not in train_summary:
            continue
        value = train_summary[key]
        if value is None and key in ("initial_loss", "final_loss") \
                and train_summary.get("steps") == 0:
            continue  # no optimisation step ran (train.max_steps = 0: evaluate a checkpoint)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ReportInputError(f"{train_source}: {key}: expected a finite number, "
                                   f"got {value!r}")
        out[f"train.{key}"] = int(value) if decimals == 0 else round(float(value), decimals)
    return dict(sorted(out.items()))
