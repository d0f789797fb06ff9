"""Pascal VOC 2012 (+ SBD) -> canonical prepared layout with ``trainaug`` (datasets.md §2, §9).

* ``train``/``val``: VOC ``ImageSets/Segmentation`` lists; ``trainaug`` = (SBD train ∪ SBD val
  ∪ VOC train) − VOC val (10,582 ids). Without SBD (synthetic demo) ``trainaug`` = ``train``.
* Images are copied as delivered from ``JPEGImages`` into ``images/{trainaug,val}`` (SBD
  ``img/`` only as a logged fallback for an id missing from VOC).
* Masks: VOC 'P' PNGs -> 'L' with identical indices (keeps the 255 boundary band); SBD
  ``cls/<id>.mat`` ``GTcls.Segmentation`` (0..20, no 255) -> 'L'. ``trainaug_masks``:
  ``voc_first`` takes the VOC PNG for the 1,464 VOC-train ids and SBD for the rest;
  ``drsleep_zip`` takes every ``trainaug`` mask verbatim from ``SegmentationClassAug/``.
* Hummingbird low-shot sets and reference-order lists (§7) via ``neco.data.hbird_sets``.
* Production mode (``verify_counts``) asserts the §2.3 counts and canonical md5s.

The tree is built in a staging directory and renamed into place; PNGs use fixed encoder
settings, so a rerun is byte-identical.
"""

from __future__ import annotations

import enum
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neco.config import ConfigError, DownloadConfig
from neco.data.class_names import VOC_CLASS_NAMES
from neco.data.errors import DataError
from neco.data.hbird_sets import HbirdSetsConfig, fetch_hbird_sets, install_hbird_sets
from neco.data.label_png import check_label_values, decode_images, read_label_png, write_label_png
from neco.data.meta import SplitRecord, build_meta, parse_id_list, write_meta, write_split
from neco.data.source_archives import archive_sources, extract_sources, fetch_sources
from neco.data.staging import log_progress, staged_dir
from neco.download.archives import ArchiveConfig

log = logging.getLogger(__name__)

CONVERTER_VERSION = "voc-1"
NUM_CLASSES = 21
IGNORE_INDEX = 255
# datasets.md §2.3: split sizes and md5 of the canonical (sorted, LF, trailing newline) lists.
EXPECTED_COUNTS = {"train": 1464, "val": 1449, "trainaug": 10582}
EXPECTED_MD5 = {
    "val": "5510db06bbb92848a0bf6109eba6d646",
    "trainaug": "215992f6fd958f89800449fdb4bbabe6",
}


class TrainaugMasks(str, enum.Enum):
    """Where ``trainaug`` masks come from (datasets.md §2.4)."""

    VOC_FIRST = "voc_first"
    DRSLEEP_ZIP = "drsleep_zip"


@dataclass(frozen=True)
class VocConfig:
    """``datasets.voc`` in params.

    Attributes:
        archives: ``voc2012`` (always), ``sbd`` (with ``use_sbd``), ``segclassaug``
            (with ``trainaug_masks: drsleep_zip``); other keys are ignored.
        use_sbd: build ``trainaug`` with SBD (paper: true); false gives ``trainaug`` = ``train``.
        trainaug_masks: mask source of ``trainaug`` ids (project default ``voc_first``).
        hbird_sets: Hummingbird file sets to fetch and install, or None.
        verify_counts: assert the §2.3/§7 counts and md5s (true for the real dataset).
        cache_dir: shared folder of verified archives, or None.
    """

    archives: dict[str, ArchiveConfig]
    use_sbd: bool
    trainaug_masks: TrainaugMasks
    hbird_sets: HbirdSetsConfig | None
    verify_counts: bool
    cache_dir: str | None


def required_archives(cfg: VocConfig) -> list[str]:
    """Archive keys this configuration needs, validated against ``cfg.archives``.

    Raises:
        ConfigError: naming the params key that is missing or inconsistent.
    """
    keys = ["voc2012"]
    if cfg.use_sbd:
        keys.append("sbd")
    if cfg.trainaug_masks is TrainaugMasks.DRSLEEP_ZIP:
        if not cfg.use_sbd:
            raise ConfigError("datasets.voc.trainaug_masks=drsleep_zip needs use_sbd=true "
                              "(the trainaug id list comes from SBD)")
        keys.append("segclassaug")
    missing = [k for k in keys if k not in cfg.archives]
    if missing:
        raise ConfigError(f"datasets.voc.archives: missing {missing} (needed by this config)")
    return keys


def fetch_voc(cfg: VocConfig, raw_dir: Path, *, download: DownloadConfig, progress: bool) -> None:
    """Download stage of ``voc``: the needed archives and the Hummingbird file sets.

    ``download`` is ``runtime.download`` (retries, timeout, backoff; cannot change any file).
    """
    keys = required_archives(cfg)
    fetch_sources({k: cfg.archives[k] for k in keys}, raw_dir, cache_dir=cfg.cache_dir,
                  download=download, progress=progress, param_prefix="datasets.voc.archives")
    if cfg.hbird_sets is not None:
        fetch_hbird_sets(cfg.hbird_sets, raw_dir / "hbird_sets", dataset="voc",
                         verify=cfg.verify_counts, download=download, progress=progress)


def prepare_voc(cfg: VocConfig, raw_dir: Path, out_dir: Path, *, progress: bool) -> None:
    """Prepare stage of ``voc``: extract the fetched archives and write the canonical tree."""
    keys = required_archives(cfg)
    archives = {k: cfg.archives[k] for k in keys}
    with extract_sources(archives, raw_dir, near=out_dir, source="voc") as roots:
        prepare_voc_tree(
            roots["voc2012"] / "VOCdevkit" / "VOC2012",
            out_dir,
            sbd_root=roots["sbd"] / "benchmark_RELEASE" / "dataset" if cfg.use_sbd else None,
            segaug_root=roots.get("segclassaug"),
            trainaug_masks=cfg.trainaug_masks,
            hbird_dir=raw_dir / "hbird_sets" if cfg.hbird_sets is not None else None,
            hbird_files=cfg.hbird_sets.files if cfg.hbird_sets is not None else [],
            verify_counts=cfg.verify_counts,
            name="voc",
            class_names=VOC_CLASS_NAMES,
            sources=archive_sources(archives, cfg.hbird_sets),
            progress=progress,
        )


def load_sbd_mask(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as ``uint8 (H, W)``.

    Raises:
        FileNotFoundError / DataError: naming the file.
    """
    import scipy.io  # lazy: only the prepare stage needs scipy

    if not path.is_file():
        raise FileNotFoundError(f"{path}: SBD class mask not found")
    try:
        seg = scipy.io.loadmat(path)["GTcls"][0]["Segmentation"][0]
    except Exception as err:
        raise DataError(f"{path}: cannot read GTcls.Segmentation: {err}") from err
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, range "
                        f"[{seg.min()}, {seg.max()}]; expected 2-D uint8 labels")
    return seg.astype(np.uint8)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found")
    return parse_id_list(path.read_bytes(), source=str(path))


def prepare_voc_tree(
    voc_root: Path,
    out_dir: Path,
    *,
    sbd_root: Path | None,
    segaug_root: Path | None,
    trainaug_masks: TrainaugMasks,
    hbird_dir: Path | None,
    hbird_files: Sequence[str],
    verify_counts: bool,
    name: str,
    class_names: Sequence[str],
    sources: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Convert extracted VOC (+ SBD) folders into the canonical layout at ``out_dir``.

    Args:
        voc_root: ``VOCdevkit/VOC2012``.
        out_dir: prepared tree; replaced as a whole on success.
        sbd_root: ``benchmark_RELEASE/dataset``, or None (``trainaug`` = ``train``).
        segaug_root: folder of ``SegmentationClassAug/<id>.png`` files (``drsleep_zip`` only).
        trainaug_masks: mask precedence for ``trainaug``.
        hbird_dir: folder mirroring HB ``file_sets/``, or None.
        hbird_files: paths under ``hbird_dir`` to install.
        verify_counts: assert §2.3 counts and md5s and the full §7 file-set table.
        name: dataset name for ``meta.json`` (``voc``, ``synthetic``).
        class_names: C names; masks must lie in ``[0, C) ∪ {255}``.
        sources: ``meta.json`` ``sources`` entry (archive names and checksums).
        progress: log progress.

    Returns:
        The written ``meta.json`` content.
    """
    seg_dir = voc_root / "SegmentationClass"
    sets_dir = voc_root / "ImageSets" / "Segmentation"
    train = _read_list(sets_dir / "train.txt")
    val = _read_list(sets_dir / "val.txt")
    if set(train) & set(val):
        raise DataError(f"{sets_dir}: train.txt and val.txt overlap, e.g. "
                        f"{sorted(set(train) & set(val))[:3]}")
    if (sets_dir / "trainval.txt").is_file():
        trainval = set(_read_list(sets_dir / "trainval.txt"))
        if trainval != set(train) | set(val):
            raise DataError(f"{sets_dir / 'trainval.txt'}: does not equal train.txt ∪ val.txt")
    if sbd_root is not None:
        sbd_ids = _read_list(sbd_root / "train.txt") + _read_list(sbd_root / "val.txt")
        trainaug = sorted((set(sbd_ids) | set(train)) - set(val))
    else:
        if trainaug_masks is TrainaugMasks.DRSLEEP_ZIP:
            raise ConfigError("trainaug_masks=drsleep_zip needs SBD (use_sbd=true)")
        trainaug = sorted(train)
    num_classes = len(class_names)
    voc_train = set(train)

    def mask_for(sid: str, split: str) -> tuple[np.ndarray, Path]:
        if split == "val" or (trainaug_masks is TrainaugMasks.VOC_FIRST and sid in voc_train):
            path = seg_dir / f"{sid}.png"
            return read_label_png(path), path
        if trainaug_masks is TrainaugMasks.DRSLEEP_ZIP:
            assert segaug_root is not None, "segaug_root is required for drsleep_zip"
            path = segaug_root / f"{sid}.png"
            return read_label_png(path), path
        assert sbd_root is not None
        path = sbd_root / "cls" / f"{sid}.mat"
        return load_sbd_mask(path), path

    def image_for(sid: str, split: str) -> Path:
        image = voc_root / "JPEGImages" / f"{sid}.jpg"
        if not image.is_file() and sbd_root is not None:
            fallback = sbd_root / "img" / f"{sid}.jpg"
            if fallback.is_file():
                log.warning("%s missing; using SBD image %s", image, fallback)
                image = fallback
        if not image.is_file():
            raise FileNotFoundError(f"{image}: image of {split} id {sid!r} not found")
        return image

    with staged_dir(out_dir) as tmp:
        records: dict[str, SplitRecord] = {}
        for split, ids in (("val", sorted(val)), ("trainaug", trainaug)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "masks" / split).mkdir(parents=True)
            images = [image_for(sid, split) for sid in ids]
            sizes = decode_images(images)  # every pixel: a truncated JPEG fails here, named
            for sid, image, hw in log_progress(zip(ids, images, sizes, strict=True),
                                               total=len(ids), desc=f"{name} {split}",
                                               enabled=progress):
                mask, mask_src = mask_for(sid, split)
                if mask.shape != hw:
                    raise DataError(f"{mask_src}: mask size {mask.shape} (H, W) differs from "
                                    f"image {image} size {hw}")
                check_label_values(mask, num_classes=num_classes, ignore_index=IGNORE_INDEX,
                                   source=str(mask_src))
                shutil.copyfile(image, tmp / "images" / split / f"{sid}.jpg")
                write_label_png(tmp / "masks" / split / f"{sid}.png", mask)
        splits_dir = tmp / "splits"
        for split, ids in (("train", train), ("val", val), ("trainaug", trainaug)):
            records[split] = write_split(splits_dir / f"{split}.txt", ids)
        if verify_counts:
            _verify(records)
        if hbird_dir is not None:
            canonical = {"trainaug": set(trainaug), "val": set(val)}
            records.update(install_hbird_sets(hbird_dir, hbird_files, dataset="voc",
                                              splits_dir=splits_dir, canonical=canonical,
                                              verify=verify_counts))
        meta = build_meta(
            name=name, num_classes=num_classes, ignore_index=IGNORE_INDEX,
            class_names=class_names, splits=records, sources=sources,
            converter_version=CONVERTER_VERSION,
            params={"use_sbd": sbd_root is not None, "trainaug_masks": trainaug_masks.value,
                    "verify_counts": verify_counts, "hbird_files": sorted(hbird_files)},
        )
        write_meta(tmp / "meta.json", meta)
    return meta


def _verify(records: Mapping[str, SplitRecord]) -> None:
    for split, count in EXPECTED_COUNTS.items():
        if records[split].count != count:
            raise DataError(f"VOC split {split!r}: {records[split].count} ids, expected {count} "
                            "(datasets.md §2.3)")
    for split, md5 in EXPECTED_MD5.items():
        if records[split].md5 != md5:
            raise DataError(f"VOC split {split!r}: canonical list md5 {records[split].md5}, "
                            f"expected {md5} (datasets.md §2.3)")
