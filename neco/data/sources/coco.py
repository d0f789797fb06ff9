"""COCO 2017 prepare: images, COCO-Things (12) and COCO-Stuff (15) masks, splits (datasets.md §4,
§6, §9).

Output (``out_dir``, replaced as a whole on success)::

    images/{train2017,val2017}/<id>.jpg
    things/masks/{val2017,<train split>}/<id>.png     'L', 0..11, 255
    stuff/masks/{val2017,<train split>}/<id>.png      'L', 0..14, 255
    categories/{panoptic_categories.json,stuff_categories.json}
    splits/{train2017,val2017,train2017_10pct_seed400}.txt
    meta.json (unlabelled images, NeCo training)  meta_things.json  meta_stuff.json

Masks are converted for all of ``val2017`` and for the linear-probe subset of ``train2017``
(§4.6), or for all of ``train2017`` with ``convert_train: all`` (masks still live under
``masks/train2017``). Archives are extracted into ``.<out>.extract/`` next to ``out_dir``
(idempotent, removed after success), never into the prepared tree.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from neco.config import ConfigError, DownloadConfig
from neco.data.errors import DataError
from neco.data.label_png import decode_images, read_label_png, write_label_png
from neco.data.meta import SplitRecord, build_meta, write_meta, write_split
from neco.data.sources import coco_categories as cc
from neco.data.sources.coco_masks import (
    read_panoptic_ids,
    regenerate_stuff_ids,
    stuff_mask,
    things_mask,
)
from neco.data.staging import log_progress, staged_dir
from neco.download.archives import ArchiveConfig
from neco.download.extract import archive_checksum, extract_archive, extract_nested_zips
from neco.download.fetch import fetch_archives
from neco.io import write_json

log = logging.getLogger(__name__)

CONVERTER_VERSION = "coco-1"
ARCHIVE_KEYS = ("train2017", "val2017", "panoptic", "stuff")
EXPECTED_COUNTS = {"train2017": 118_287, "val2017": 5_000}
ID_RE = re.compile(r"^\d{12}$")


class ConvertTrain(str, enum.Enum):
    """Which train2017 masks to convert (§4.4)."""

    SUBSET = "subset"  # only the linear-probe subset (§4.6)
    ALL = "all"  # all 118,287 images


@dataclass(frozen=True)
class LinearSubsetConfig:
    """The persisted linear-probe subset of train2017 (§4.6).

    Attributes:
        fraction: n = floor(fraction · N) (paper 0.1).
        seed: PCG64 seed of the permutation (paper 400).
    """

    fraction: float
    seed: int


@dataclass(frozen=True)
class CocoConfig:
    """``datasets.coco`` params.

    Attributes:
        archives: keys ``train2017``, ``val2017``, ``panoptic``, ``stuff`` (datasets.md §1).
        linear_subset: the 10 % subset rule.
        convert_train: ``subset`` or ``all``.
        regenerate_stuff_from_json: cross-check val stuff masks against pycocotools.
        verify_counts: assert the production counts (118,287 / 5,000).
        cache_dir: optional shared directory of verified archives.
    """

    archives: dict[str, ArchiveConfig]
    linear_subset: LinearSubsetConfig
    convert_train: ConvertTrain
    regenerate_stuff_from_json: bool
    verify_counts: bool
    cache_dir: str | None


def fetch_coco(cfg: CocoConfig, raw_dir: Path, *, download: DownloadConfig, progress: bool) -> None:
    """Download stage for COCO: fetch and verify the four archives into ``raw_dir``.

    ``download`` is ``runtime.download`` (retries, timeout, backoff; cannot change any file).
    """
    missing = [k for k in ARCHIVE_KEYS if k not in cfg.archives]
    if missing:
        raise ConfigError(f"datasets.coco.archives is missing key(s) {missing}")
    fetch_archives(cfg.archives, Path(raw_dir),
                   cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None, progress=progress,
                   retries=download.retries, timeout_s=download.timeout_s,
                   backoff_s=download.backoff_s, param_prefix="datasets.coco.archives")


def linear_subset_name(fraction: float, seed: int) -> str:
    """Split name of the subset, e.g. ``train2017_10pct_seed400`` for (0.1, 400)."""
    pct = Fraction(repr(fraction)) * 100
    text = str(pct.numerator) if pct.denominator == 1 else repr(float(pct))
    return f"train2017_{text}pct_seed{seed}"


def linear_subset_ids(ids: Sequence[str], *, fraction: float, seed: int) -> list[str]:
    """The §4.6 rule: sorted(base[perm[:n]]) with base = sorted ids, n = floor(fraction · N),
    perm = ``Generator(PCG64(seed)).permutation(N)``.

    ``fraction`` is read as the decimal it is written as (0.1 -> 1/10) so that n is exact.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"datasets.coco.linear_subset.fraction must be in (0, 1], got {fraction}")
    base = sorted(ids)
    n = math.floor(Fraction(repr(fraction)) * len(base))
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(base))
    return sorted(base[int(i)] for i in perm[:n])


def _find(root: Path, name: str, what: str) -> Path:
    hits = sorted(root.rglob(name))
    if len(hits) != 1:
        raise FileNotFoundError(f"{root}: expected exactly one {name!r} ({what}), found "
                                f"{[str(h) for h in hits] or 'none'}")
    return hits[0]


def _png_index(root: Path) -> dict[str, Path]:
    """basename -> path of every PNG under ``root`` (nested-zip layouts are unverified)."""
    index: dict[str, Path] = {}
    for p in root.rglob("*.png"):
        if p.name in index:
            raise DataError(f"{root}: duplicate PNG basename {p.name} ({index[p.name]}, {p})")
        index[p.name] = p
    return index


def _image_ids(folder: Path, archive: str) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{archive}: expected top-level folder {folder.name}/ "
                                f"(extracted to {folder.parent})")
    ids = []
    for p in folder.iterdir():
        if p.suffix == ".jpg" and ID_RE.match(p.stem):
            ids.append(p.stem)
        else:
            log.warning("%s: ignoring stray file %s", archive, p.name)
    return sorted(ids)


def _link_tree(files: Sequence[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copyfile(f, dest / f.name)


def _load_json(path: Path, keys: Sequence[str] = ("categories", "annotations")) -> Any:
    """A COCO annotation JSON: an object with list fields ``keys`` (DataError naming the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: invalid JSON: {err}") from err
    bad = [k for k in keys if not isinstance(obj, dict) or not isinstance(obj.get(k), list)]
    if bad:
        raise DataError(f"{path}: expected a COCO JSON object with list field(s) {bad}")
    return obj


def prepare_coco(cfg: CocoConfig, raw_dir: Path, out_dir: Path, *, progress: bool) -> None:
    """Prepare stage for COCO (see module docstring).

    Raises:
        FileNotFoundError: an archive, annotation or mask is missing (named).
        ConfigError: an archive key is missing from ``datasets.coco.archives``.
        DataError: counts or class tables differ from the spec, or an input file is malformed
            (an image that does not decode, a mask of the wrong size, invalid JSON).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    paths = {}
    for key in ARCHIVE_KEYS:
        if key not in cfg.archives:
            raise ConfigError(f"datasets.coco.archives is missing key {key!r}")
        paths[key] = raw_dir / cfg.archives[key].filename
        if not paths[key].is_file():
            raise FileNotFoundError(f"{paths[key]}: archive datasets.coco.archives.{key} not "
                                    "found; run the download@coco stage first "
                                    "(`dvc repro download@coco`)")
    work = out_dir.parent / f".{out_dir.name}.extract"
    ex = {k: extract_archive(paths[k], work / k) for k in ARCHIVE_KEYS}
    ids = {s: _image_ids(ex[s] / s, paths[s].name) for s in ("train2017", "val2017")}
    for split, want in EXPECTED_COUNTS.items():
        if cfg.verify_counts and len(ids[split]) != want:
            raise DataError(f"{paths[split].name}: {len(ids[split])} images in {split}/, "
                            f"expected {want}")

    pan_val = _load_json(_find(ex["panoptic"], "panoptic_val2017.json", paths["panoptic"].name))
    stuff_val_path = _find(ex["stuff"], "stuff_val2017.json", paths["stuff"].name)
    stuff_val = _load_json(stuff_val_path)
    t_lut, t_names = cc.things_lut(pan_val["categories"], source="panoptic_val2017.json")
    s_lut, s_names = cc.stuff_lut(stuff_val["categories"], source="stuff_val2017.json")
    for got, table, what in ((t_names, cc.THINGS_CLASS_NAMES, "things"),
                             (s_names, cc.STUFF_CLASS_NAMES, "stuff")):
        if tuple(got) != table:
            raise DataError(f"COCO-{what} super-classes from the val JSON {got} differ from "
                            f"datasets.md §4 {list(table)}")
    ref_t, ref_s = cc.reference_luts()
    tables_match = bool((ref_t == t_lut).all() and (ref_s == s_lut).all())
    if not tables_match:
        log.warning("COCO category->super-class maps differ from the datasets.md §4 tables")

    sub_cfg = cfg.linear_subset
    subset_name = linear_subset_name(sub_cfg.fraction, sub_cfg.seed)
    subset = linear_subset_ids(ids["train2017"], fraction=sub_cfg.fraction, seed=sub_cfg.seed)
    if not subset:
        raise DataError(f"{subset_name}: the linear-probe subset is empty "
                        f"({len(ids['train2017'])} train images)")
    convert = {"val2017": ids["val2017"],
               "train2017": ids["train2017"] if cfg.convert_train == ConvertTrain.ALL
               else subset}
    stats: dict[str, Any] = {"unexpected_stuff_pixels": 0}
    # Decode every image once (a truncated JPEG fails here, named); masks are checked against
    # these sizes.
    sizes = {split: dict(zip(ids[split], decode_images(
        [ex[split] / split / f"{i}.jpg" for i in ids[split]]), strict=True))
        for split in ("train2017", "val2017")}

    with staged_dir(out_dir) as stage:
        for split, split_ids in convert.items():
            _convert_split(split, split_ids, ex, paths, stage, t_lut, s_lut, stats, progress,
                           pan_val if split == "val2017" else None, sizes[split])
        for split_ids, split in ((subset, subset_name), (ids["val2017"], "val2017")):
            for i in split_ids:  # §4.6: every subset id has both masks
                for kind in ("things", "stuff"):
                    mask_split = "train2017" if split == subset_name else split
                    if not (stage / kind / "masks" / mask_split / f"{i}.png").is_file():
                        raise FileNotFoundError(f"{split}: id {i} has no {kind} mask")
        if cfg.regenerate_stuff_from_json:
            stats["stuff_crosscheck_val2017"] = _crosscheck(stuff_val, stage, s_lut)

        for split in ("train2017", "val2017"):
            _link_tree([ex[split] / split / f"{i}.jpg" for i in ids[split]],
                       stage / "images" / split)
        records = {"train2017": write_split(stage / "splits/train2017.txt", ids["train2017"]),
                   "val2017": write_split(stage / "splits/val2017.txt", ids["val2017"]),
                   subset_name: write_split(stage / f"splits/{subset_name}.txt", subset)}
        write_json(stage / "categories/panoptic_categories.json", pan_val["categories"])
        write_json(stage / "categories/stuff_categories.json", stuff_val["categories"])
        _write_metas(cfg, stage, paths, records, subset_name, t_names, s_names,
                     {**stats, "category_tables_match_spec": tables_match})
    shutil.rmtree(work, ignore_errors=True)


def _convert_split(split: str, split_ids: Sequence[str], ex: dict[str, Path],
                   paths: dict[str, Path], stage: Path, t_lut: np.ndarray, s_lut: np.ndarray,
                   stats: dict[str, Any], progress: bool, pan: dict[str, Any] | None,
                   sizes: Mapping[str, tuple[int, int]]) -> None:
    """Write things and stuff masks of ``split_ids`` into ``stage/{things,stuff}/masks/split``."""
    if not split_ids:
        return
    pan_name, stuff_name = paths["panoptic"].name, paths["stuff"].name
    pan_dirs = extract_nested_zips(ex["panoptic"], [f"**/panoptic_{split}.zip"])
    stuff_dirs = extract_nested_zips(ex["stuff"], [f"**/stuff_{split}_pixelmaps.zip"])
    if pan is None:
        pan = _load_json(_find(ex["panoptic"], f"panoptic_{split}.json", pan_name))
    anns: dict[str, dict[str, Any]] = {}
    for a in pan["annotations"]:
        if not (isinstance(a, dict) and isinstance(a.get("file_name"), str)
                and isinstance(a.get("segments_info"), list)):
            raise DataError(f"{pan_name}: panoptic_{split}.json: annotation {str(a)[:80]!r} needs "
                            "a 'file_name' string and a 'segments_info' list")
        anns[Path(a["file_name"]).stem] = a
    pan_png = _png_index(pan_dirs[0])
    stuff_png = _png_index(stuff_dirs[0])
    out_t = stage / "things" / "masks" / split
    out_s = stage / "stuff" / "masks" / split
    out_t.mkdir(parents=True)
    out_s.mkdir(parents=True)
    for i in log_progress(split_ids, total=len(split_ids), desc=f"coco masks {split}",
                          enabled=progress):
        hw = sizes[i]
        ann = anns.get(i)
        if ann is None:
            raise FileNotFoundError(f"{pan_name}: panoptic_{split}.json has no annotation for "
                                    f"image {i}")
        png = pan_png.get(ann["file_name"])
        if png is None:
            raise FileNotFoundError(f"{pan_name}: panoptic PNG {ann['file_name']} of image {i} "
                                    f"not found in nested panoptic_{split}.zip")
        seg_ids = read_panoptic_ids(png)
        pixelmap_path = stuff_png.get(f"{i}.png")
        if pixelmap_path is None:
            raise FileNotFoundError(f"{stuff_name}: stuff pixelmap {i}.png not found in nested "
                                    f"stuff_{split}_pixelmaps.zip")
        pixelmap = read_label_png(pixelmap_path)
        for arr, path in ((seg_ids, png), (pixelmap, pixelmap_path)):
            if arr.shape != hw:
                raise DataError(f"{path}: mask size {arr.shape} != image size {hw} of {i}.jpg")
        write_label_png(out_t / f"{i}.png",
                        things_mask(seg_ids, ann["segments_info"], t_lut, source=str(png)))
        smask, unexpected = stuff_mask(pixelmap, s_lut)
        if unexpected:
            log.warning("%s: %d pixels with unexpected values -> 255", pixelmap_path, unexpected)
        stats["unexpected_stuff_pixels"] += unexpected
        write_label_png(out_s / f"{i}.png", smask)


def _crosscheck(stuff_json: dict[str, Any], stage: Path, s_lut: np.ndarray) -> dict[str, int]:
    """Compare val stuff masks with a pycocotools regeneration from the JSON annotations."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in stuff_json["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in stuff_json["images"]}
    n_img = n_px = n_bad = 0
    for image_id, anns in sorted(by_image.items()):
        path = stage / "stuff" / "masks" / "val2017" / f"{image_id:012d}.png"
        if not path.is_file():
            continue
        mine = read_label_png(path)
        regen = s_lut[regenerate_stuff_ids(anns, *sizes[image_id])]
        n_img, n_px, n_bad = n_img + 1, n_px + mine.size, n_bad + int((regen != mine).sum())
    if n_bad:
        log.warning("stuff cross-check: %d of %d pixels differ from the pycocotools "
                    "regeneration (%d images)", n_bad, n_px, n_img)
    return {"images": n_img, "pixels": n_px, "mismatched_pixels": n_bad}


def _write_metas(cfg: CocoConfig, stage: Path, paths: dict[str, Path],
                 records: dict[str, SplitRecord], subset_name: str, t_names: Sequence[str],
                 s_names: Sequence[str], stats: dict[str, Any]) -> None:
    sources = {k: {"filename": p.name, "checksum": archive_checksum(p)} for k, p in paths.items()}
    params = {"convert_train": cfg.convert_train.value,
              "linear_subset": {"fraction": cfg.linear_subset.fraction,
                                "seed": cfg.linear_subset.seed},
              "regenerate_stuff_from_json": cfg.regenerate_stuff_from_json,
              "verify_counts": cfg.verify_counts}
    labelled = ["val2017", subset_name] + (["train2017"] if cfg.convert_train == ConvertTrain.ALL
                                           else [])
    write_meta(stage / "meta.json", {
        **build_meta(name="coco", num_classes=0, ignore_index=cc.IGNORE, class_names=[],
                     splits=records, sources=sources, converter_version=CONVERTER_VERSION,
                     params=params),
        "stats": stats})
    for kind, names in (("things", t_names), ("stuff", s_names)):
        meta = build_meta(name=f"coco_{kind}", num_classes=len(names), ignore_index=cc.IGNORE,
                          class_names=names, splits={k: records[k] for k in labelled},
                          sources=sources, converter_version=CONVERTER_VERSION, params=params)
        write_meta(stage / f"meta_{kind}.json", {**meta, "mask_dir": f"{kind}/masks",
                                                 "stats": stats})
