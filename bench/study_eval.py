"""Evaluation side of ``bench/demo_study.py``: the demo data and the three protocols on a file.

:func:`prepare_demo` generates and prepares the demo dataset exactly as the ``generate`` and
``prepare`` stages do (the repository's ``datasets.synthetic`` block) and, when asked, a disjoint
extra training split from another generator seed. :func:`evaluate_file` scores one exported
backbone (``*.safetensors``) with the pipeline's own, unchanged protocol functions and the
committed ``eval`` settings: linear probe, clustering (K = C and the overclustering K) and
Hummingbird at memory fraction 1/1 (the 1/8 sweep is skipped for time; it does not change the
1/1 number).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from neco.config import EvalConfig, RuntimeConfig, load_section, load_value
from neco.data.registry import get_dataset, open_dataset
from neco.data.sources.synthetic import SyntheticSourceConfig, prepare_synthetic
from neco.data.sources.synthetic_images import SyntheticConfig, generate
from neco.evals.extract import extract_val_features
from neco.evals.hbird import hummingbird
from neco.evals.inputs import hbird_subsets
from neco.evals.linear import linear_probe
from neco.evals.models import extractor_for
from neco.evals.overcluster import cluster_eval
from neco.models.export import load_exported
from neco.models.recipes import load_training

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def generator_config(params: Path, **overrides: Any) -> SyntheticConfig:
    """The repository's ``datasets.synthetic.generator`` block with ``overrides`` applied."""
    block = OmegaConf.to_container(OmegaConf.load(params).datasets.synthetic.generator)
    assert isinstance(block, dict)
    block.update(overrides)
    return SyntheticConfig(**block)  # type: ignore[arg-type]


def prepare_split(cfg: SyntheticConfig, root: Path) -> Path:
    """Generate and prepare one synthetic dataset under ``root`` (idempotent); the prepared dir."""
    prepared = root / "prepared"
    if (prepared / "DONE").is_file():
        return prepared
    source = SyntheticSourceConfig(generator=cfg)
    generate(cfg, root / "raw", progress=False)
    prepare_synthetic(source, root / "raw", prepared, progress=False)
    (prepared / "DONE").write_text("ok\n")
    return prepared


def prepare_demo(workdir: Path, params: Path = REPO_PARAMS) -> Path:
    """The demo dataset (``datasets.synthetic`` as committed), prepared under ``workdir``."""
    return prepare_split(generator_config(params), workdir / "demo")


class Evaluator:
    """The three protocols with the committed ``eval`` settings on the demo splits.

    Args:
        prepared: the prepared demo tree (:func:`prepare_demo`).
        params: the params file whose ``eval``/``train``/``runtime`` sections are used.
    """

    def __init__(self, prepared: Path, params: Path = REPO_PARAMS) -> None:
        self.prepared = prepared
        self.seed = load_value(params, "seed", int)
        self.train = load_training(params)[0]
        self.ev = load_section(params, "eval", EvalConfig)
        self.runtime = load_section(params, "runtime", RuntimeConfig)
        spec = get_dataset("synthetic")
        train_split, val_split = spec.eval_splits
        self.train_ds = open_dataset("synthetic", prepared, train_split)
        self.val_ds = open_dataset("synthetic", prepared, val_split)
        self.device = torch.device("cpu")

    def val_features(self, weights: Path) -> torch.Tensor:
        """Frozen val tokens ``(N, s*s, D)`` of ``weights`` at ``eval.features.input_size``."""
        extractor = self._extractor(weights)
        return extract_val_features(
            extractor, self.val_ds, input_size=self.ev.features.input_size,
            image_std=self.ev.hbird.image_std, batch_size=32, device=self.device,
            autocast=self.ev.hbird.autocast,
        )  # fmt: skip

    def _extractor(self, weights: Path) -> Any:
        backbone = load_exported(weights, self.train.backbone, pos_embed_interp="official")
        return extractor_for(backbone, self.device)

    def evaluate(self, weights: Path, protocols: tuple[str, ...] = ("linear", "cluster", "hbird")
                 ) -> dict[str, float]:
        """Headline numbers (mIoU in %) of one exported backbone file."""
        t0 = time.perf_counter()
        extractor = self._extractor(weights)
        feats = extract_val_features(
            extractor, self.val_ds, input_size=self.ev.features.input_size,
            image_std=self.ev.hbird.image_std, batch_size=32, device=self.device,
            autocast=self.ev.hbird.autocast,
        )  # fmt: skip
        grid = int(round(feats.shape[1] ** 0.5))
        out: dict[str, float] = {}
        if "cluster" in protocols:
            res = cluster_eval(feats, self.val_ds, self.ev.overcluster, grid=grid,
                               figure_examples=0)
            for r in res.results:
                out[f"cluster_k{r.k_requested}"] = 100 * r.mean
            over = [r.mean for r in res.results if r.k_requested != self.val_ds.num_classes]
            out["overcluster_mean"] = 100 * sum(over) / max(1, len(over))
        if "linear" in protocols:
            lin = linear_probe(extractor, self.train_ds, self.val_ds, self.ev.linear,
                               device=self.device, seed=self.seed, figure_examples=0,
                               val_features=feats)
            out["linear"] = 100 * lin.miou
        if "hbird" in protocols:
            cfg = dataclasses.replace(self.ev.hbird, fractions=["1/1"])
            hb = hummingbird(extractor, self.train_ds, self.val_ds, cfg, device=self.device,
                             seed=self.seed, runtime=self.runtime.eval, query_features=feats,
                             subsets=hbird_subsets(self.prepared))
            assert hb.miou is not None
            out["hbird"] = 100 * hb.miou
        out["eval_s"] = time.perf_counter() - t0
        return out
