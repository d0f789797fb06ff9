"""Stage ``prepare@<source>``: raw archives -> canonical prepared tree (datasets.md §8, §9).

Usage (paths come from ``dvc.yaml``)::

    python -m stages.prepare --params params.yaml --dataset voc \
        --raw data/raw/voc --out data/prepared/voc

Reads ``datasets.<source>`` (declared) and ``runtime.progress`` (undeclared: cannot change
results), then calls the source's prepare function from ``neco.data.registry``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from neco.config import load_section, load_value
from neco.data.registry import SOURCES, get_source

PARAMS = ["datasets.{dataset}"]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the dataset's params block and run its prepare function."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES), help="source name")
    parser.add_argument("--raw", type=Path, required=True, help="download stage output")
    parser.add_argument("--out", type=Path, required=True, help="prepared tree to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    spec = get_source(args.dataset)
    cfg = load_section(args.params, f"datasets.{args.dataset}", spec.config_cls)
    progress = load_value(args.params, "runtime.progress", bool)
    spec.prepare_fn()(cfg, args.raw, args.out, progress=progress)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
