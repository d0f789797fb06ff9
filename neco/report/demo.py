"""What the demo's numbers say: the init against a random init, NeCo against the init.

For a backbone without published weights the init is the ``pretrain`` stage's self-supervised
backbone. The pipeline trains one NeCo seed; the seed spread, and the random-init reference,
come from the committed study (``reports/demo_study.json``, ``bench/demo_study.py``: the same
protocol functions and eval settings, 3 NeCo seeds per setting). The study applies only where it
measured *this* configuration: the setting whose pretraining config and NeCo overrides equal the
run's resolved values, on the demo's training split; and only while the evaluation still gives
its numbers: our init must score within :data:`INIT_TOLERANCE` of the study's init on every
protocol (a changed eval setting or code path shows up there). Otherwise the section says so and
prints no spread, so a stale study is never presented as this run's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from neco.report.collect import EvalEntry
from neco.report.tables import md_table

#: mIoU points within which our init must reproduce the study's init (thread-count and BLAS
#: differences move CPU results by < 0.1 point; an eval change moves them by more).
INIT_TOLERANCE = 0.5

#: (label, our score key (:func:`_scores`), the study's metric key)
PROTOCOLS: tuple[tuple[str, str, str], ...] = (
    ("Hummingbird 1/1", "hbird", "hbird"),
    ("clustering K = C", "cluster_kc", "cluster_k7"),
    ("overclustering mean", "overcluster_mean", "overcluster_mean"),
    ("linear", "linear", "linear"),
)


def _scores(entries: Sequence[EvalEntry], dataset: str, model: str) -> dict[str, float] | None:
    """Our scores of ``model`` in percent, from the eval entries: each protocol's primary
    ``miou`` (linear: the selected epoch; clustering: K = C, Hungarian; Hummingbird: 1/1) and
    the mean over the overclustering Ks (many-to-one matching)."""
    found = {e.protocol: e.models[model] for e in entries
             if e.dataset == dataset and model in e.models}
    if not {"hbird", "overcluster", "linear"} <= set(found):
        return None
    over = [100 * float(r["mean"]) for r in found["overcluster"].get("results", [])
            if r.get("matching") != "hungarian"]
    return {"hbird": 100 * float(found["hbird"]["miou"]),
            "cluster_kc": 100 * float(found["overcluster"]["miou"]),
            "linear": 100 * float(found["linear"]["miou"]),
            "overcluster_mean": sum(over) / len(over) if over else float("nan")}


def matching_setting(study: Mapping[str, Any], pretrain_config: Mapping[str, Any],
                     resolved: Mapping[str, Any], steps: int) -> Mapping[str, Any] | None:
    """The study setting that measured this run's configuration, or None.

    Same pretraining config, every NeCo override of the setting equal to the run's resolved
    value, and the same number of training images: the setting's ``train_images`` give the
    run's ``steps`` (``(train_images // batch) * epochs``, the loader drops the last partial
    batch), so the demo split (96) and an extra 1,000-image split never match each other; a
    setting that trains on another image distribution (``train_generator``) never matches.
    """
    values, keys = resolved.get("values"), resolved.get("params_keys")
    if not isinstance(values, Mapping) or not isinstance(keys, Mapping):
        return None
    batch, epochs = values.get("batch_size"), values.get("epochs")
    if not isinstance(batch, int) or not isinstance(epochs, int) or batch < 1:
        return None
    effective = {str(keys.get(n, n)): v for n, v in values.items()}
    inits = study.get("inits", {})
    for setting in study.get("settings", []):
        init = inits.get(setting.get("init"), {})
        config = {k: v for k, v in dict(init.get("config") or {}).items() if k != "backbone"}
        overrides = {**study.get("neco_base", {}), **setting.get("neco", {})}
        images = setting.get("train_images")
        if (isinstance(images, int) and (images // batch) * epochs == steps
                and not setting.get("train_generator")
                and config == dict(pretrain_config)
                and all(k in effective and effective[k] == v for k, v in overrides.items())):
            found: Mapping[str, Any] = setting
            return found
    return None


def _random_reference(study: Mapping[str, Any]) -> Mapping[str, float] | None:
    for setting in study.get("settings", []):
        if setting.get("init") == "random" and "init_scores" in setting:
            scores: Mapping[str, float] = setting["init_scores"]
            return scores
    return None


def _f(x: float | None, sign: bool = False) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:+.1f}" if sign else f"{x:.1f}"


def demo_section(entries: Sequence[EvalEntry], *, dataset: str, pretrain: Mapping[str, Any],
                 study: Mapping[str, Any] | None, resolved: Mapping[str, Any],
                 steps: int) -> list[str]:
    """The "What the demo shows" lines of ``tables.md`` (empty if the init was not pretrained).

    Args:
        entries: the validated eval metrics (``neco.report.collect.load_metrics``).
        dataset: the eval dataset (the demo's ``synthetic``).
        pretrain: the ``pretrain`` stage record.
        study: ``reports/demo_study.json`` (None: not committed).
        resolved: the training resolution (``models/neco/resolved_config.json``).
        steps: NeCo optimiser steps of the run (the training summary).
    """
    if not pretrain.get("pretrained"):
        return []
    init, neco = _scores(entries, dataset, "init"), _scores(entries, dataset, "neco")
    if init is None or neco is None:
        return []
    lines = [
        f"The init is the `pretrain` stage's self-supervised `{pretrain.get('backbone')}` "
        f"({pretrain.get('objective')}, {pretrain.get('steps')} steps on "
        f"{pretrain.get('num_images')} label-free images of generator seed "
        f"{pretrain.get('generator_seed')}, disjoint from the NeCo train and eval images; "
        f"section Pretraining). This run trains one NeCo seed.", "",
    ]
    setting = (matching_setting(study, pretrain.get("config", {}), resolved, steps)
               if study else None)
    summary = study.get("summary", {}).get(setting["name"], {}) if study and setting else {}
    agree = [label for label, ours, key in PROTOCOLS
             if abs(init[ours] - float(summary.get(key, {}).get("init", "nan"))) <= INIT_TOLERANCE]
    applies = bool(summary) and len(agree) == len(PROTOCOLS)
    random = _random_reference(study) if (study and applies) else None
    rows, outside = [], []
    for label, ours, key in PROTOCOLS:
        stat: Mapping[str, float] = summary.get(key, {}) if applies else {}
        rnd = float(random[key]) if random and key in random else None
        std = float(stat.get("std", float("nan")))
        delta = neco[ours] - init[ours]
        if stat and abs(delta - stat["gap"]) > 2 * std:
            outside.append(label)
        rows.append([
            label, _f(rnd), _f(init[ours]), _f(init[ours] - rnd if rnd is not None else None, True),
            _f(neco[ours]), _f(delta, True),
            (f"{stat['gap']:+.1f} ± {std:.1f}" if stat else "–"),
            ("yes" if stat and stat["gap"] > 2 * std else "no") if stat else "–",
        ])
    lines += md_table(["protocol", "random init", "init (ours)", "init − random", "NeCo (ours)",
                       "Δ NeCo − init (ours)", "study Δ, mean ± std", "study Δ > 2 std"], rows)
    lines.append("")
    if applies and setting is not None:
        n = summary.get("n")
        lines += [
            f"Random init and study columns: `reports/demo_study.md`, setting "
            f"`{setting['name']}` ({setting.get('note', '')}), the same configuration over "
            f"{n} NeCo seeds (the study's init reproduces ours within {INIT_TOLERANCE} points "
            "on every protocol). Chance-level reference: the random init of the same "
            "architecture. A Δ inside ±2 std is seed noise, not an effect.", "",
        ]
        if outside:
            lines += [f"This run's Δ lies outside the study's mean ± 2 std on: "
                      f"{', '.join(outside)}; one seed is one draw, the study's mean over "
                      f"{n} seeds is the estimate.", ""]
    elif study is None:
        lines += ["No study committed (`reports/demo_study.json`): no seed spread.", ""]
    elif setting is None:
        lines += ["The committed study (`reports/demo_study.md`) did not measure this "
                  "configuration: no seed spread for it (run `python -m bench.demo_study`).", ""]
    else:
        lines += [f"The committed study's setting `{setting.get('name')}` matches this "
                  "configuration, but its init scores differ from ours by more than "
                  f"{INIT_TOLERANCE} points (the evaluation changed since): its numbers are not "
                  "shown; rerun `python -m bench.demo_study`.", ""]
    return lines
