"""The ``features@<dataset>`` stage's library entry: val-split tokens of every eval model, once.

The linear probe (validation every epoch) and clustering read these; Hummingbird reads them too
when its input size equals ``eval.features.input_size``. Augmented train/memory features change
every epoch and are computed live by the protocols. The models are
:func:`neco.evals.models.eval_models`: ``eval.models`` plus the paper's ``baseline`` where the
backbone has one.
"""

from __future__ import annotations

import time
from pathlib import Path

from neco.config import EvalConfig, RuntimeConfig, TrainConfig
from neco.config.evals import Autocast, ImageStd
from neco.data.registry import check_eval_dataset, open_dataset
from neco.evals.cache import save_features
from neco.evals.extract import extract_val_features
from neco.evals.models import (
    eval_backbone_name,
    eval_device,
    eval_models,
    extractor_for,
    load_for_eval,
    model_provenance,
)


def cache_features(
    dataset: str,
    *,
    train: TrainConfig,
    ev: EvalConfig,
    data_root: Path,
    init_dir: Path,
    models_dir: Path,
    out_dir: Path,
    runtime: RuntimeConfig,
) -> None:
    """Write ``<out_dir>/<model>.pt``: val-split patch tokens of every eval model
    (:func:`neco.evals.models.eval_models`; ``meta.backbone`` is the architecture loaded).

    Tokens are fp32 with the correct ImageNet std, at ``eval.features.input_size``; ``data_root``
    is the prepared tree of ``dataset``'s source (``data/prepared/<source>``).
    """
    spec = check_eval_dataset(dataset, ev.datasets)
    _, val_split = spec.eval_splits
    ds = open_dataset(dataset, data_root, val_split)
    device = eval_device()
    for model in eval_models(ev.models, train.backbone):
        t0 = time.perf_counter()
        backbone = load_for_eval(model, train, ev, models_dir=models_dir, init_dir=init_dir)
        tokens = extract_val_features(
            extractor_for(backbone, device),
            ds,
            input_size=ev.features.input_size,
            image_std=ImageStd.correct,
            batch_size=runtime.eval.features_batch_size,
            device=device,
            autocast=Autocast.none,
            num_workers=runtime.workers(),
        )
        meta = {
            "dataset": dataset,
            "split": val_split,
            "model": model,
            "backbone": eval_backbone_name(model, train.backbone),
            "input_size": ev.features.input_size,
            "patch_size": backbone.patch_size,
            "image_std": ImageStd.correct.value,
            "pos_embed_interp": train.pos_embed_interp,
            "provenance": model_provenance(model, backbone.load_report, train=train, ev=ev,
                                           models_dir=models_dir),
        }
        save_features(out_dir / f"{model}.pt", tokens=tokens, ids=list(ds.ids), meta=meta)
        seconds = time.perf_counter() - t0
        print(f"[features] {dataset}/{model}: {tuple(tokens.shape)} in {seconds:.1f} s")
