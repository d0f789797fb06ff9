"""The synthetic demo source: generate (its "download") and prepare (datasets.md §11).

The generator (``neco.data.sources.synthetic_images``) writes the VOC 2012 raw layout, so the
demo is prepared by the unchanged VOC converter with SBD disabled (``trainaug`` = ``train``), no
Hummingbird file sets and no count checks. Class names come from the generator's ``manifest.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from neco.config import DownloadConfig
from neco.data.errors import DataError
from neco.data.meta import md5_file
from neco.data.sources.synthetic_images import SyntheticConfig, generate
from neco.data.sources.voc import IGNORE_INDEX, TrainaugMasks, prepare_voc_tree
from neco.io import report_disk_full


@dataclass(frozen=True)
class SyntheticSourceConfig:
    """``datasets.synthetic`` in params.

    Attributes:
        generator: parameters of the procedural generator (``neco.data.sources.synthetic_images``).
    """

    generator: SyntheticConfig


def fetch_synthetic(
    cfg: SyntheticSourceConfig, raw_dir: Path, *, download: DownloadConfig, progress: bool
) -> None:
    """Download stage of ``synthetic``: generate the raw VOC-layout dataset.

    ``download`` (``runtime.download``) is accepted for the uniform fetch signature and ignored:
    nothing is downloaded.

    Raises:
        ConfigError: a generator parameter is out of range (named).
        DiskFullError: the file system of ``raw_dir`` is full (nothing is left behind).
    """
    del download
    with report_disk_full(raw_dir):
        generate(cfg.generator, Path(raw_dir), progress=progress)


def prepare_synthetic(
    cfg: SyntheticSourceConfig, raw_dir: Path, out_dir: Path, *, progress: bool
) -> None:
    """Prepare stage of ``synthetic``: the VOC converter without SBD (``trainaug`` = ``train``).

    Raises:
        FileNotFoundError: the raw dataset (``manifest.json``) is missing.
        DataError: the manifest is not valid JSON, or the raw dataset was generated with other
            parameters than ``cfg``.
    """
    manifest_path = Path(raw_dir) / "manifest.json"
    stage = "download@synthetic"  # the synthetic source's download stage runs the generator
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: not found; run the {stage} stage first, "
                                f"which generates the dataset (`dvc repro {stage}`)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{manifest_path}: invalid JSON: {err}; rerun the {stage} "
                        "stage") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("class_names"), list):
        raise DataError(f"{manifest_path}: expected a JSON object with a 'class_names' list; "
                        f"rerun the {stage} stage")
    if manifest.get("params") != asdict(cfg.generator):
        raise DataError(f"{manifest_path}: generated with other parameters than "
                        f"datasets.synthetic.generator; rerun the {stage} stage")
    if manifest.get("ignore_index") != IGNORE_INDEX:
        raise DataError(f"{manifest_path}: ignore_index {manifest.get('ignore_index')!r}, "
                        f"expected {IGNORE_INDEX}")
    prepare_voc_tree(
        Path(raw_dir) / "VOCdevkit" / "VOC2012",
        out_dir,
        sbd_root=None,
        segaug_root=None,
        trainaug_masks=TrainaugMasks.VOC_FIRST,
        hbird_dir=None,
        hbird_files=[],
        verify_counts=False,
        name="synthetic",
        class_names=list(manifest["class_names"]),
        sources={"synthetic": {"manifest_md5": md5_file(manifest_path),
                               "generator_version": manifest.get("generator_version")}},
        progress=progress,
    )
