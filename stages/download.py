"""Stage ``download@<source>``: fetch and verify a source's raw archives (datasets.md §1, §8).

Usage (paths come from ``dvc.yaml``)::

    python -m stages.download --params params.yaml --dataset coco --out data/raw/coco

Reads ``datasets.<source>`` (declared), ``runtime.progress`` and ``runtime.download``
(retries, timeout, backoff; undeclared: they cannot change any file), then calls the source's
fetch function from ``neco.data.registry``: real datasets download (or link a ``local_path``)
and verify their archives; ``synthetic`` runs the generator. Offline, a download fails within
seconds with a message that names each URL and the alternatives (mirror ``urls``,
``local_path``, ``cache_dir``).

Partial downloads are kept outside ``--out`` (DVC deletes a failed stage's outputs before it
reruns it): in ``datasets.<source>.cache_dir`` when set, else in ``$XDG_CACHE_HOME/neco/downloads``
(``~/.cache/neco/downloads``), under a file lock. So a rerun of a failed ``download@<source>``
resumes with an HTTP ``Range`` request, and two concurrent runs never write the same partial
file (``neco.download.fetch``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from neco.config import DownloadConfig, load_section, load_value
from neco.data.registry import SOURCES, get_source

PARAMS = ["datasets.{dataset}"]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the source's params block and run its fetch function."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES), help="source name")
    parser.add_argument("--out", type=Path, required=True, help="raw directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    spec = get_source(args.dataset)
    cfg: object = load_section(args.params, f"datasets.{args.dataset}", spec.config_cls)
    progress = load_value(args.params, "runtime.progress", bool)
    download = load_section(args.params, "runtime.download", DownloadConfig)
    args.out.mkdir(parents=True, exist_ok=True)
    spec.fetch_fn()(cfg, args.out, download=download, progress=progress)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
