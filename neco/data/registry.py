"""Dataset registry: the one place to add a dataset (STYLE §3 "New dataset").

Two kinds of entries:

* ``SOURCES``: raw datasets that are fetched and prepared, one ``datasets.<name>`` params block
  each. ``config``, ``fetch`` and ``prepare`` are dotted paths ``"module:attr"`` resolved on
  use, so importing the registry stays light (no scipy, no generator code).
  Signatures: ``fetch(cfg, raw_dir, *, download, progress) -> None`` (``download`` is the
  ``runtime.download`` ``DownloadConfig``: retries, timeout, backoff) and
  ``prepare(cfg, raw_dir, out_dir, *, progress) -> None``.
* ``DATASETS``: labelled or unlabelled views over a prepared source, used by training and the
  eval protocols (evaluation.md §1.6): classes, ignore index, folders and split roles.

To add a dataset: write its config dataclass, fetch and prepare functions, add a ``SourceSpec``
and one ``DatasetSpec`` per view here, and a ``datasets.<name>`` block in ``params.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neco.config import ConfigError
from neco.config.validate import Resolver
from neco.config.validate import validate_params as _validate_params
from neco.data.class_names import ADE20K_CLASS_NAMES, VOC_CLASS_NAMES
from neco.data.errors import DataError
from neco.data.meta import read_meta
from neco.data.reader import ImageDataset, SegmentationDataset


def resolve(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute.

    Raises:
        ValueError: naming the target when the module or attribute does not exist.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"invalid dotted target {target!r}; expected 'module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} for {target!r}: {err}") from err
    if not hasattr(module, attr):
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (registry target {target!r})")
    return getattr(module, attr)


@dataclass(frozen=True)
class SourceSpec:
    """A raw dataset that is fetched and prepared (``datasets.<name>`` in params).

    Attributes:
        name: params key under ``datasets``.
        config: ``"module:Class"`` of the frozen config dataclass of the params block.
        fetch: ``"module:function"``, ``fetch(cfg, raw_dir, *, download, progress) -> None``.
        prepare: ``"module:function"``, ``prepare(cfg, raw_dir, out_dir, *, progress) -> None``.
    """

    name: str
    config: str
    fetch: str
    prepare: str

    @property
    def config_cls(self) -> type:
        """The config dataclass (imports its module)."""
        cls = resolve(self.config)
        assert isinstance(cls, type)
        return cls

    def fetch_fn(self) -> Callable[..., None]:
        """The fetch function (imports its module)."""
        return resolve(self.fetch)  # type: ignore[no-any-return]

    def prepare_fn(self) -> Callable[..., None]:
        """The prepare function (imports its module)."""
        return resolve(self.prepare)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DatasetSpec:
    """A view over a prepared source (evaluation.md §1.6).

    Attributes:
        name: dataset key used by ``eval.datasets`` and ``data.train``.
        source: the ``SOURCES`` entry whose prepared tree this reads.
        num_classes: C (0 for unlabelled views).
        ignore_index: void label (255; ADE20K 0); None for unlabelled views.
        class_names: C names, or None to read them from ``meta_file``.
        meta_file: metadata file in the prepared root (``meta.json``, ``meta_things.json``).
        mask_dir: mask folder (``masks``, ``things/masks``), None for unlabelled views; masks
            of split s live in ``<mask_dir>/<image_dirs[s]>/<id>.png``.
        images_dir: folder holding the per-split image folders (``images``; IN-100 ``""``).
        image_dirs: split -> image subfolder (VOC ``train`` and ``trainaug`` -> ``trainaug``).
        image_ext: image extension (``.jpg``; IN-100 ``.JPEG``).
        train_split: linear-probe train split / Hummingbird memory; None if unlabelled.
        val_split: evaluation split; None if unlabelled.
        unlabelled_split: split NeCo may train on; None if none.
    """

    name: str
    source: str
    num_classes: int
    ignore_index: int | None
    class_names: tuple[str, ...] | None
    meta_file: str
    mask_dir: str | None
    images_dir: str
    image_dirs: dict[str, str]
    image_ext: str
    train_split: str | None
    val_split: str | None
    unlabelled_split: str | None

    @property
    def labelled(self) -> bool:
        """Whether the view has masks."""
        return self.mask_dir is not None

    def image_subdir(self, split: str) -> str:
        """Image subfolder of ``split``; low-shot ``hbird/...`` splits use the train split's.

        Raises:
            KeyError: listing the valid splits.
        """
        if split in self.image_dirs:
            return self.image_dirs[split]
        if split.startswith("hbird/") and self.train_split is not None:
            return self.image_dirs[self.train_split]
        raise KeyError(f"dataset {self.name!r} has no split {split!r}; expected one of "
                       f"{sorted(self.image_dirs)} or 'hbird/<div>/<name>'")

    @property
    def eval_splits(self) -> tuple[str, str]:
        """``(train_split, val_split)`` of a labelled view.

        Raises:
            ValueError: the view is unlabelled (the same error as :func:`open_dataset`).
        """
        if self.train_split is None or self.val_split is None:
            raise ValueError(f"dataset {self.name!r} is unlabelled; use open_images()")
        return self.train_split, self.val_split


SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec("synthetic", "neco.data.sources.synthetic:SyntheticSourceConfig",
                   "neco.data.sources.synthetic:fetch_synthetic",
                   "neco.data.sources.synthetic:prepare_synthetic"),
        SourceSpec("voc", "neco.data.sources.voc:VocConfig", "neco.data.sources.voc:fetch_voc",
                   "neco.data.sources.voc:prepare_voc"),
        SourceSpec("ade20k", "neco.data.sources.ade20k:Ade20kConfig",
                   "neco.data.sources.ade20k:fetch_ade20k",
                   "neco.data.sources.ade20k:prepare_ade20k"),
        SourceSpec("coco", "neco.data.sources.coco:CocoConfig",
                   "neco.data.sources.coco:fetch_coco", "neco.data.sources.coco:prepare_coco"),
        SourceSpec("in100", "neco.data.sources.in100:In100Config",
                   "neco.data.sources.in100:fetch_in100",
                   "neco.data.sources.in100:prepare_in100"),
    )
}

_VOC_DIRS = {"train": "trainaug", "trainaug": "trainaug", "val": "val"}
_ADE_DIRS = {"training": "training", "validation": "validation"}
_COCO_DIRS = {"train2017": "train2017", "train2017_10pct_seed400": "train2017",
              "val2017": "val2017"}


def _seg(name: str, source: str, c: int, ignore: int, names: tuple[str, ...] | None,
         meta: str, masks: str, dirs: dict[str, str], train: str, val: str,
         unlabelled: str | None) -> DatasetSpec:
    return DatasetSpec(name=name, source=source, num_classes=c, ignore_index=ignore,
                       class_names=names, meta_file=meta, mask_dir=masks, images_dir="images",
                       image_dirs=dirs, image_ext=".jpg", train_split=train, val_split=val,
                       unlabelled_split=unlabelled)


def _unlabelled(name: str, source: str, images_dir: str, dirs: dict[str, str], ext: str,
                split: str) -> DatasetSpec:
    return DatasetSpec(name=name, source=source, num_classes=0, ignore_index=None,
                       class_names=None, meta_file="meta.json", mask_dir=None,
                       images_dir=images_dir, image_dirs=dirs, image_ext=ext, train_split=None,
                       val_split=None, unlabelled_split=split)


DATASETS: dict[str, DatasetSpec] = {
    d.name: d
    for d in (
        _seg("synthetic", "synthetic", 7, 255, None, "meta.json", "masks", _VOC_DIRS,
             "trainaug", "val", "train"),
        _seg("voc", "voc", 21, 255, VOC_CLASS_NAMES, "meta.json", "masks", _VOC_DIRS,
             "trainaug", "val", "trainaug"),
        _seg("ade20k", "ade20k", 151, 0, ADE20K_CLASS_NAMES, "meta.json", "masks", _ADE_DIRS,
             "training", "validation", "training"),
        _seg("coco_things", "coco", 12, 255, None, "meta_things.json", "things/masks",
             _COCO_DIRS, "train2017_10pct_seed400", "val2017", "train2017"),
        _seg("coco_stuff", "coco", 15, 255, None, "meta_stuff.json", "stuff/masks",
             _COCO_DIRS, "train2017_10pct_seed400", "val2017", "train2017"),
        _unlabelled("coco", "coco", "images", {"train2017": "train2017"}, ".jpg", "train2017"),
        _unlabelled("in100", "in100", "", {"train": "train"}, ".JPEG", "train"),
    )
}


def get_source(name: str) -> SourceSpec:
    """The ``SOURCES`` entry ``name``; the error lists the valid names."""
    if name not in SOURCES:
        raise KeyError(f"unknown dataset source {name!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[name]


def get_dataset(name: str) -> DatasetSpec:
    """The ``DATASETS`` entry ``name``; the error lists the valid names."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def load_class_names(spec: DatasetSpec, prepared_root: Path) -> list[str]:
    """Class names of a labelled view, checked against its prepared metadata file.

    Raises:
        DataError: naming the metadata file when C, the ignore index or the names disagree.
    """
    path = Path(prepared_root) / spec.meta_file
    meta = read_meta(path, source=spec.source)
    names = list(meta["class_names"])
    if meta["num_classes"] != spec.num_classes or len(names) != spec.num_classes:
        raise DataError(f"{path}: num_classes {meta['num_classes']} ({len(names)} names), "
                        f"registry expects {spec.num_classes} for {spec.name!r}")
    if meta["ignore_index"] != spec.ignore_index:
        raise DataError(f"{path}: ignore_index {meta['ignore_index']}, registry expects "
                        f"{spec.ignore_index} for {spec.name!r}")
    if spec.class_names is not None and tuple(names) != spec.class_names:
        raise DataError(f"{path}: class_names differ from the registry's for {spec.name!r}")
    return names


def open_dataset(name: str, prepared_root: Path, split: str) -> SegmentationDataset:
    """A labelled split of a prepared dataset, e.g. ``open_dataset("voc", root, "val")``.

    Args:
        name: ``DATASETS`` key.
        prepared_root: the source's prepared tree (``data/prepared/<source>``).
        split: split name, including low-shot ``hbird/1_div_8/trainaug_8_42``.
    """
    spec = get_dataset(name)
    if spec.mask_dir is None or spec.ignore_index is None:
        raise ValueError(f"dataset {name!r} is unlabelled; use open_images()")
    subdir = spec.image_subdir(split)
    root = Path(prepared_root)
    return SegmentationDataset(
        root, split, image_dir=f"{spec.images_dir}/{subdir}".lstrip("/"),
        mask_dir=f"{spec.mask_dir}/{subdir}", image_ext=spec.image_ext,
        num_classes=spec.num_classes, ignore_index=spec.ignore_index,
        class_names=load_class_names(spec, root),
    )


def open_images(name: str, prepared_root: Path, split: str) -> ImageDataset:
    """The images of a split (no labels), e.g. for NeCo training and the crop manifest."""
    spec = get_dataset(name)
    subdir = spec.image_subdir(split)
    return ImageDataset(Path(prepared_root), split,
                        image_dir=f"{spec.images_dir}/{subdir}".lstrip("/"),
                        image_ext=spec.image_ext)


def validate_params(params_path: Path | str, resolver: Resolver | None = None) -> dict[str, Any]:
    """Validate a whole params file against the section schemas and this registry's sources.

    ``resolver`` builds ``train`` and ``crops`` (their ``null`` recipe keys need the backbone
    registry: :func:`neco.show.validate_params` passes it).

    Beyond :func:`neco.config.validate.validate_params`, every ``eval.datasets`` entry must map
    a known dataset to its real source, and ``data.train`` must be a known dataset.
    """
    out = _validate_params(params_path, {name: s.config_cls for name, s in SOURCES.items()},
                           resolver=resolver)
    for name in out["eval"].datasets:
        try:
            check_eval_dataset(name, out["eval"].datasets)
        except ConfigError as err:
            raise ConfigError(f"{params_path}: {err}") from None
    if out["data"].train not in DATASETS:
        raise ConfigError(
            f"{params_path}: data.train: unknown dataset {out['data'].train!r}; "
            f"expected one of {sorted(DATASETS)}"
        )
    return out


def check_eval_dataset(name: str, datasets: Mapping[str, str]) -> DatasetSpec:
    """The spec of eval dataset ``name``, checking ``eval.datasets`` maps it to its real source.

    Raises:
        ConfigError: ``name`` is not in ``eval.datasets``, is unknown, or is mapped to another
            source than the registry's (the prepared directory would be the wrong one).
    """
    if name not in datasets:
        raise ConfigError(f"eval.datasets: {name!r} is not listed; listed: {sorted(datasets)}")
    if name not in DATASETS:
        raise ConfigError(
            f"eval.datasets.{name}: unknown dataset; expected one of {sorted(DATASETS)}"
        )
    spec = DATASETS[name]
    if datasets[name] != spec.source:
        raise ConfigError(
            f"eval.datasets.{name}: source {datasets[name]!r}, but {name!r} is prepared from "
            f"source {spec.source!r} (data/prepared/{spec.source}); write `{name}: {spec.source}`"
        )
    return spec
