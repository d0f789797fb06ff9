"""ADE20K SceneParsing (ADEChallengeData2016) -> canonical prepared layout (datasets.md §3, §9).

* Splits: ``training`` / ``validation`` are the sorted stems of ``images/<split>/*.jpg``.
  Stray files (``.DS_Store``, anything not ``*.jpg``) are ignored and logged, never paired;
  annotations are paired by id and must exist, with mask size == image size.
* No label conversion: images and 'L' annotation PNGs (0..150, 0 = "other", ignored by the
  protocols but still one of C = 151 outputs) are copied byte for byte after validation.
* Class names: the 151-entry table of §3.2 (0 = ``other`` + the 150 mmseg short names).
  ``objectInfo150.txt`` is cross-checked, not parsed into names: its first ``;``-synonym is
  not the short name for multi-word classes (``chest;of;drawers;...`` gives ``chest``).
* Hummingbird low-shot sets (§7) via ``neco.data.hbird_sets``; production mode
  (``verify_counts``) asserts 20,210 / 2,000 images and the full §7 table.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neco.config import ConfigError, DownloadConfig
from neco.data.class_names import ADE20K_CLASS_NAMES
from neco.data.errors import DataError
from neco.data.hbird_sets import HbirdSetsConfig, fetch_hbird_sets, install_hbird_sets
from neco.data.label_png import check_label_values, decode_images, read_label_png
from neco.data.meta import SplitRecord, build_meta, write_meta, write_split
from neco.data.source_archives import archive_sources, extract_sources, fetch_sources
from neco.data.staging import log_progress, staged_dir
from neco.download.archives import ArchiveConfig

log = logging.getLogger(__name__)

CONVERTER_VERSION = "ade20k-1"
NUM_CLASSES = 151
IGNORE_INDEX = 0
SPLITS = ("training", "validation")
EXPECTED_COUNTS = {"training": 20210, "validation": 2000}


@dataclass(frozen=True)
class Ade20kConfig:
    """``datasets.ade20k`` in params.

    Attributes:
        archives: ``ade20k`` (ADEChallengeData2016.zip); other keys are ignored.
        hbird_sets: Hummingbird file sets to fetch and install, or None.
        verify_counts: assert the §3.3/§7 counts and md5s (true for the real dataset).
        cache_dir: shared folder of verified archives, or None.
    """

    archives: dict[str, ArchiveConfig]
    hbird_sets: HbirdSetsConfig | None
    verify_counts: bool
    cache_dir: str | None


def _archives(cfg: Ade20kConfig) -> dict[str, ArchiveConfig]:
    if "ade20k" not in cfg.archives:
        raise ConfigError("datasets.ade20k.archives: missing 'ade20k' (ADEChallengeData2016.zip)")
    return {"ade20k": cfg.archives["ade20k"]}


def fetch_ade20k(
    cfg: Ade20kConfig, raw_dir: Path, *, download: DownloadConfig, progress: bool
) -> None:
    """Download stage of ``ade20k``: the archive and the Hummingbird file sets.

    ``download`` is ``runtime.download`` (retries, timeout, backoff; cannot change any file).
    """
    fetch_sources(_archives(cfg), raw_dir, cache_dir=cfg.cache_dir, download=download,
                  progress=progress, param_prefix="datasets.ade20k.archives")
    if cfg.hbird_sets is not None:
        fetch_hbird_sets(cfg.hbird_sets, raw_dir / "hbird_sets", dataset="ade20k",
                         verify=cfg.verify_counts, download=download, progress=progress)


def prepare_ade20k(cfg: Ade20kConfig, raw_dir: Path, out_dir: Path, *, progress: bool) -> None:
    """Prepare stage of ``ade20k``: extract the fetched archive, write the canonical tree."""
    archives = _archives(cfg)
    with extract_sources(archives, raw_dir, near=out_dir, source="ade20k") as roots:
        prepare_ade20k_tree(
            roots["ade20k"] / "ADEChallengeData2016",
            out_dir,
            hbird_dir=raw_dir / "hbird_sets" if cfg.hbird_sets is not None else None,
            hbird_files=cfg.hbird_sets.files if cfg.hbird_sets is not None else [],
            verify_counts=cfg.verify_counts,
            sources=archive_sources(archives, cfg.hbird_sets),
            progress=progress,
        )


def list_split_ids(image_dir: Path) -> list[str]:
    """Sorted stems of ``image_dir/*.jpg``; other entries are logged and ignored.

    Raises:
        FileNotFoundError: naming the folder.
    """
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image folder not found")
    ids = []
    for entry in sorted(image_dir.iterdir()):
        if entry.is_file() and entry.suffix == ".jpg" and not entry.name.startswith("."):
            ids.append(entry.stem)
        else:
            log.warning("ignoring stray entry %s (not an image)", entry)
    return ids


def check_object_info(path: Path, *, verify: bool) -> None:
    """Cross-check ``objectInfo150.txt`` against the §3.2 class table.

    Each row's ``;``-separated Name must contain the short name's words contiguously
    (``chest of drawers`` in ``chest;of;drawers;chest;...``); a mismatch is logged (the
    column layout is unverified). With ``verify`` the file must exist and hold exactly the
    rows 1..150.

    Raises:
        FileNotFoundError / DataError: naming the file (``verify`` only).
    """
    if not path.is_file():
        if verify:
            raise FileNotFoundError(f"{path}: objectInfo150.txt not found")
        log.warning("%s not found; class names not cross-checked", path)
        return
    rows: list[int] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text: {err}") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        cols = line.split("\t")
        if not line.strip() or not cols[0].strip().isdigit():
            continue  # header or blank line
        idx, words = int(cols[0]), cols[-1].strip().split(";")
        rows.append(idx)
        if not 1 <= idx < NUM_CLASSES:
            raise DataError(f"{path}:{lineno}: class index {idx} outside 1..150")
        want = ADE20K_CLASS_NAMES[idx].split(" ")
        if not any(words[i : i + len(want)] == want for i in range(len(words))):
            log.warning("%s:%d: name %r does not contain class %d %r", path, lineno, cols[-1],
                        idx, ADE20K_CLASS_NAMES[idx])
    if verify and rows != list(range(1, NUM_CLASSES)):
        raise DataError(f"{path}: expected rows 1..150 in order, found {len(rows)} rows")


def prepare_ade20k_tree(
    ade_root: Path,
    out_dir: Path,
    *,
    hbird_dir: Path | None,
    hbird_files: Sequence[str],
    verify_counts: bool,
    sources: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Convert an extracted ``ADEChallengeData2016`` folder into the layout at ``out_dir``.

    Args:
        ade_root: the ``ADEChallengeData2016`` folder.
        out_dir: prepared tree; replaced as a whole on success.
        hbird_dir: folder mirroring HB ``file_sets/``, or None.
        hbird_files: paths under ``hbird_dir`` to install.
        verify_counts: assert the image counts and the full §7 file-set table.
        sources: ``meta.json`` ``sources`` entry.
        progress: log progress.

    Returns:
        The written ``meta.json`` content.
    """
    check_object_info(ade_root / "objectInfo150.txt", verify=verify_counts)
    split_ids = {split: list_split_ids(ade_root / "images" / split) for split in SPLITS}
    with staged_dir(out_dir) as tmp:
        records: dict[str, SplitRecord] = {}
        for split, ids in split_ids.items():
            ann_dir = ade_root / "annotations" / split
            if ann_dir.is_dir():
                known = {f"{sid}.png" for sid in ids}
                extra = sorted(p.name for p in ann_dir.iterdir() if p.name not in known)
                if extra:
                    log.warning("%s: %d entries without an image are ignored, e.g. %s",
                                ann_dir, len(extra), extra[:3])
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "masks" / split).mkdir(parents=True)
            images = [ade_root / "images" / split / f"{sid}.jpg" for sid in ids]
            sizes = decode_images(images)  # every pixel: a truncated JPEG fails here, named
            for sid, image, hw in log_progress(zip(ids, images, sizes, strict=True),
                                               total=len(ids), desc=f"ade20k {split}",
                                               enabled=progress):
                mask_path = ann_dir / f"{sid}.png"
                mask = read_label_png(mask_path)
                if mask.shape != hw:
                    raise DataError(f"{mask_path}: mask size {mask.shape} (H, W) differs from "
                                    f"image {image} size {hw}")
                check_label_values(mask, num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
                                   source=str(mask_path))
                shutil.copyfile(image, tmp / "images" / split / f"{sid}.jpg")
                shutil.copyfile(mask_path, tmp / "masks" / split / f"{sid}.png")
            records[split] = write_split(tmp / "splits" / f"{split}.txt", ids)
            if verify_counts and records[split].count != EXPECTED_COUNTS[split]:
                raise DataError(f"ADE20K {split}: {records[split].count} images, expected "
                                f"{EXPECTED_COUNTS[split]} (datasets.md §3.3)")
        if hbird_dir is not None:
            records.update(install_hbird_sets(
                hbird_dir, hbird_files, dataset="ade20k", splits_dir=tmp / "splits",
                canonical={"training": set(split_ids["training"])}, verify=verify_counts))
        meta = build_meta(
            name="ade20k", num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
            class_names=ADE20K_CLASS_NAMES, splits=records, sources=sources,
            converter_version=CONVERTER_VERSION,
            params={"verify_counts": verify_counts, "hbird_files": sorted(hbird_files)},
        )
        write_meta(tmp / "meta.json", meta)
    return meta
