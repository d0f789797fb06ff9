"""The ``eval@<protocol>-<dataset>`` stage's library entry: one protocol on one dataset.

:func:`evaluate` opens the prepared splits, loads every eval model strictly (``init`` and/or
``neco`` from ``eval.models``, plus the paper's ``baseline`` where the backbone has one:
:func:`neco.evals.models.eval_models`), calls the pure protocol function registered in
:data:`neco.evals.protocols.PROTOCOLS` and writes the metrics JSON and the example figure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neco.config import ConfigError, EvalConfig, RuntimeConfig, TrainConfig
from neco.data.registry import check_eval_dataset, open_dataset
from neco.evals.cache import load_features, load_features_meta
from neco.evals.inputs import draw_figure, hbird_subsets
from neco.evals.models import eval_device, eval_models, extractor_for, load_for_eval
from neco.evals.protocols import PROTOCOLS
from neco.evals.results import split_timings
from neco.io import write_json


def evaluate(
    protocol: str,
    dataset: str,
    *,
    seed: int,
    train: TrainConfig,
    ev: EvalConfig,
    data_root: Path,
    init_dir: Path,
    models_dir: Path,
    features_dir: Path,
    out: Path,
    figure: Path,
    runtime: RuntimeConfig,
    timings: Path | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``protocol`` on ``dataset`` for every eval model; write ``out`` (JSON) and ``figure``.

    The models are :func:`neco.evals.models.eval_models` (``eval.models``, then ``baseline``
    where ``train.backbone`` has a paper baseline); each record's ``provenance`` is the one
    stored with its cached features.

    Args:
        data_root: the prepared tree of ``dataset``'s source (``data/prepared/<source>``).
        timings: where the wall-time fields go (kept out of ``out``, which must depend on
            params and inputs only); None = dropped.
        config: this stage's resolved configuration (``neco.show.stage_config_record``: each
            value with its origin and paper setting), written under ``config``.

    Val tokens come from the features cache when the protocol's input size equals
    ``eval.features.input_size``; the linear probe and Hummingbird also run a live frozen
    extractor for their augmented train/memory images.

    Returns:
        The metrics payload written to ``out``.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
    cfg = getattr(ev, protocol)
    spec = check_eval_dataset(dataset, ev.datasets)
    train_split, val_split = spec.eval_splits
    val = open_dataset(dataset, data_root, val_split)
    device = eval_device()
    results = {}
    for model in eval_models(ev.models, train.backbone):
        t0 = time.perf_counter()
        cached = None
        if cfg.input_size == ev.features.input_size:
            cached = load_features(
                features_dir / f"{model}.pt", ids=list(val.ids), input_size=cfg.input_size
            )
        if not PROTOCOLS[protocol].uses_extractor:
            if cached is None:
                raise ConfigError(
                    f"eval.{protocol}.input_size ({cfg.input_size}) must equal "
                    f"eval.features.input_size ({ev.features.input_size}): it reads cached "
                    "tokens only"
                )
            grid = int(round(cached.shape[1] ** 0.5))  # square inputs: s*s tokens
            result = PROTOCOLS[protocol].run(
                cached, val, cfg, grid=grid, figure_examples=runtime.eval.figure_examples
            )
        else:
            backbone = load_for_eval(
                model, train, ev, models_dir=models_dir, init_dir=init_dir
            )
            extractor = extractor_for(backbone, device)
            train_ds = open_dataset(dataset, data_root, train_split)
            if protocol == "linear":
                result = PROTOCOLS[protocol].run(
                    extractor, train_ds, val, cfg, device=device, seed=seed,
                    figure_examples=runtime.eval.figure_examples, val_features=cached,
                    num_workers=runtime.workers(),
                )
            else:
                if cfg.image_std.value != "correct" or (
                    cfg.autocast.value == "fp16_on_cuda" and device.type == "cuda"
                ):
                    cached = None  # the cache is fp32 with the correct std: recompute queries
                result = PROTOCOLS[protocol].run(
                    extractor, train_ds, val, cfg, device=device, seed=seed, runtime=runtime.eval,
                    query_features=cached, subsets=hbird_subsets(data_root),
                    num_workers=runtime.workers(),
                )
        results[model] = result
        headline = "n/a" if result.miou is None else f"{100 * result.miou:.2f}"
        seconds = time.perf_counter() - t0
        print(f"[eval] {protocol}/{dataset}/{model}: mIoU {headline} ({seconds:.1f} s)")

    records, timed = split_timings({m: r.to_dict() for m, r in results.items()})
    for m in records:  # weights sha256, pos_embed_interp, variant, training settings (§1.2)
        records[m]["provenance"] = load_features_meta(features_dir / f"{m}.pt").get("provenance")
    payload = {
        "protocol": protocol,
        "dataset": dataset,
        "backbone": train.backbone,
        "models": records,
    }
    if config is not None:
        payload["config"] = dict(config)
    write_json(out, payload)
    if timings is not None:
        write_json(timings, {"protocol": protocol, "dataset": dataset, "models": timed})
    draw_figure(
        protocol, results, class_names=list(val.class_names), ignore_index=val.ignore_index,
        out=figure,
    )
    return payload
