"""Dataset registry, config schemas, the prepare stage and the synthetic source end to end."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.config import DownloadConfig, load_section
from neco.data.hbird_sets import expected_files
from neco.data.meta import write_split
from neco.data.registry import (
    DATASETS,
    SOURCES,
    get_dataset,
    get_source,
    open_dataset,
    open_images,
    resolve,
)
from neco.data.sources.voc import TrainaugMasks, VocConfig

# The params blocks proposed for params.yaml (CPU demo values; real datasets as in the paper).
PARAMS = textwrap.dedent(
    """
    runtime:
      num_workers: 0
      progress: false
      download:
        retries: 3
        timeout_s: 60.0
        backoff_s: 5.0
    datasets:
      synthetic:
        generator:
          seed: 0
          num_train: 6
          num_val: 3
          sizes: [48, 64]
          objects_min: 1
          objects_max: 2
          object_frac_min: 0.3
          object_frac_max: 0.6
          texture_period_min: 4.0
          texture_period_max: 8.0
          colour_min_sv: 0.3
          colour_min_contrast: 0.25
          background_cells: 4
          boundary_width: 2
          difficult_prob: 0.05
          noise_sigma: 8.0
          jpeg_quality: 95
      voc:                         # Pascal VOC 2012 + SBD -> trainaug (datasets.md §2); prepare@voc
        archives:                  # verified archives (datasets.md §1); sha1s from gluoncv/d2l
          voc2012:
            filename: VOCtrainval_11-May-2012.tar
            urls:                  # mirrors, tried in order (host.robots.ox.ac.uk is intermittently down)
              - http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
            md5: 6cd6e144f989b92b3379bac3b3de84fd    # torchvision VOCSegmentation
            sha1: 4e443f8a2eca6b1dac8a6c57641b67dd40621a49
            size: null             # bytes; null = unknown (1,999,639,040 is unverified)
            local_path: null       # an existing copy: skips the download, not the verification
          sbd:
            filename: benchmark.tgz
            urls:
              - http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz
              - https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz
            md5: 82b4d87ceb2ed10f6038a1cba92111cb    # torchvision SBDataset
            sha1: 7129e0a480c2d6afb02b517bb18ac54283bfaa35
            size: null
            local_path: null
          segclassaug:             # only fetched with trainaug_masks: drsleep_zip (no published checksum)
            filename: SegmentationClassAug.zip
            urls:
              - https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1
            md5: null
            sha1: null
            size: null
            local_path: null
        use_sbd: true              # trainaug = (SBD train ∪ SBD val ∪ VOC train) − VOC val (paper: 10,582); false: trainaug = train
        trainaug_masks: voc_first  # voc_first (VOC PNG for VOC-train ids, else SBD .mat) | drsleep_zip (reference's SegmentationClassAug)
        hbird_sets:                # Hummingbird low-shot sets + reference-order lists (datasets.md §7); null = none
          base_url: https://raw.githubusercontent.com/vpariza/open-hummingbird-eval/5e79da292730edded800a89828b84f38469f5476/file_sets
          files:                   # paths under file_sets/; md5s are the §7 table in neco/data/hbird_sets.py
            - voc/1_div_8/trainaug_8_42.txt
            - voc/1_div_8/trainaug_8_400.txt
            - voc/1_div_8/trainaug_8_783.txt
            - voc/1_div_8/trainaug_8_1293.txt
            - voc/1_div_8/trainaug_8_4019.txt
            - voc/1_div_64/trainaug_64_42.txt
            - voc/1_div_64/trainaug_64_400.txt
            - voc/1_div_64/trainaug_64_783.txt
            - voc/1_div_64/trainaug_64_1293.txt
            - voc/1_div_64/trainaug_64_4019.txt
            - voc/1_div_128/trainaug_128_42.txt
            - voc/1_div_128/trainaug_128_400.txt
            - voc/1_div_128/trainaug_128_783.txt
            - voc/1_div_128/trainaug_128_1293.txt
            - voc/1_div_128/trainaug_128_4019.txt
            - voc/full/trainaug.txt  # raw HB order -> splits/reference_order/trainaug.txt
            - voc/val.txt            # raw HB order -> splits/reference_order/val.txt
        verify_counts: true        # assert 1,464/1,449/10,582 ids, canonical md5s and the §7 md5s (false only for fixtures)
        cache_dir: null            # shared folder of verified archives (hard-linked into data/raw); null = none
      ade20k:                      # ADE20K SceneParsing, C = 151, ignore 0 (datasets.md §3); prepare@ade20k
        archives:
          ade20k:
            filename: ADEChallengeData2016.zip
            urls:
              - http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip
            md5: 7328b3957e407ddae1d3cbf487f149ef
            sha1: 219e1696abb36c8ba3a3afe7fb2f4b4606a897c7  # gluoncv
            size: null
            local_path: null
        hbird_sets:                # Hummingbird low-shot training subsets (datasets.md §7)
          base_url: https://raw.githubusercontent.com/vpariza/open-hummingbird-eval/5e79da292730edded800a89828b84f38469f5476/file_sets
          files:
            - ade20k/1_div_8/training_8_42.txt
            - ade20k/1_div_8/training_8_400.txt
            - ade20k/1_div_8/training_8_783.txt
            - ade20k/1_div_8/training_8_1293.txt
            - ade20k/1_div_8/training_8_4019.txt
            - ade20k/1_div_64/training_64_42.txt
            - ade20k/1_div_64/training_64_400.txt
            - ade20k/1_div_64/training_64_783.txt
            - ade20k/1_div_64/training_64_1293.txt
            - ade20k/1_div_64/training_64_4019.txt
            - ade20k/1_div_128/training_128_42.txt
            - ade20k/1_div_128/training_128_400.txt
            - ade20k/1_div_128/training_128_783.txt
            - ade20k/1_div_128/training_128_1293.txt
            - ade20k/1_div_128/training_128_4019.txt
        verify_counts: true        # assert 20,210 / 2,000 images, objectInfo150 rows and the §7 md5s
        cache_dir: null
    """  # noqa: E501
)


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    return path


def test_datasets_are_consistent() -> None:
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.source in SOURCES, name
        for split in (spec.train_split, spec.val_split, spec.unlabelled_split):
            assert split is None or split in spec.image_dirs, (name, split)
        assert spec.labelled == (spec.mask_dir is not None)
        if spec.labelled:
            assert spec.ignore_index is not None and spec.num_classes > 0
            assert spec.class_names is None or len(spec.class_names) == spec.num_classes
    assert (DATASETS["ade20k"].num_classes, DATASETS["ade20k"].ignore_index) == (151, 0)
    assert (DATASETS["voc"].num_classes, DATASETS["voc"].ignore_index) == (21, 255)
    assert DATASETS["coco_things"].num_classes == 12 and DATASETS["coco_stuff"].num_classes == 15
    assert DATASETS["voc"].image_subdir("train") == "trainaug"
    assert DATASETS["voc"].image_subdir("hbird/1_div_8/trainaug_8_42") == "trainaug"
    assert DATASETS["coco_things"].image_subdir("train2017_10pct_seed400") == "train2017"


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown dataset 'vocc'; expected one of \['ade20k'"):
        get_dataset("vocc")
    with pytest.raises(KeyError, match=r"unknown dataset source 'x'; .*'synthetic'"):
        get_source("x")
    with pytest.raises(KeyError, match=r"no split 'test'; expected one of \['train', 'trainaug'"):
        DATASETS["voc"].image_subdir("test")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve("neco.data.registry:nope")
    with pytest.raises(ValueError, match="expected 'module:attr'"):
        resolve("neco.data.registry")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_targets_resolve_to_typed_configs(name: str) -> None:
    spec = get_source(name)
    cls = spec.config_cls
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    for field in dataclasses.fields(cls):
        assert field.default is dataclasses.MISSING, f"{cls.__name__}.{field.name} has a default"
    assert callable(spec.fetch_fn()) and callable(spec.prepare_fn())


def test_proposed_params_blocks_load(params: Path) -> None:
    voc = load_section(params, "datasets.voc", get_source("voc").config_cls)
    assert isinstance(voc, VocConfig) and voc.trainaug_masks is TrainaugMasks.VOC_FIRST
    assert voc.archives["sbd"].md5 == "82b4d87ceb2ed10f6038a1cba92111cb"
    assert "download" not in {f.name for f in dataclasses.fields(VocConfig)}  # runtime.download
    assert load_section(params, "runtime.download", DownloadConfig) == DownloadConfig(
        retries=3, timeout_s=60.0, backoff_s=5.0)
    assert sorted(voc.hbird_sets.files) == expected_files("voc")  # type: ignore[union-attr]
    assert voc.archives["segclassaug"].md5 is None
    ade = load_section(params, "datasets.ade20k", get_source("ade20k").config_cls)
    assert sorted(ade.hbird_sets.files) == expected_files("ade20k") and ade.verify_counts
    syn = load_section(params, "datasets.synthetic", get_source("synthetic").config_cls)
    assert syn.generator.num_train == 6


def test_prepare_stage_synthetic_end_to_end(params: Path, tmp_path: Path) -> None:
    from stages.prepare import main

    spec = get_source("synthetic")
    cfg = load_section(params, "datasets.synthetic", spec.config_cls)
    raw, out = tmp_path / "raw" / "synthetic", tmp_path / "prepared" / "synthetic"
    spec.fetch_fn()(cfg, raw, download=load_section(params, "runtime.download", DownloadConfig),
                    progress=False)
    main(["--params", str(params), "--dataset", "synthetic", "--raw", str(raw), "--out", str(out)])
    manifest = json.loads((raw / "manifest.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "synthetic" and meta["class_names"] == manifest["class_names"]
    assert meta["num_classes"] == 7 and meta["ignore_index"] == 255
    train = (out / "splits" / "train.txt").read_bytes()
    assert train == (out / "splits" / "trainaug.txt").read_bytes()  # no SBD: trainaug = train
    assert meta["splits"]["train"]["count"] == 6 and meta["splits"]["val"]["count"] == 3
    assert not (out / "splits" / "hbird").exists()
    ds = open_dataset("synthetic", out, get_dataset("synthetic").train_split or "")
    assert len(ds) == 6 and ds.class_names == manifest["class_names"]
    s = ds[0]
    raw_mask = np.array(Image.open(raw / "VOCdevkit" / "VOC2012" / "SegmentationClass"
                                   / f"{s.id}.png"))
    np.testing.assert_array_equal(s.mask, raw_mask)
    assert Image.open(out / "masks" / "trainaug" / f"{s.id}.png").mode == "L"
    images = open_images("synthetic", out, "train")
    assert images.ids == ds.ids and images.sizes()[0] == s.image.shape[:2]
    # stale raw data: the config changed after generation
    changed = params.read_text().replace("seed: 0", "seed: 1")
    params.write_text(changed)
    with pytest.raises(ValueError, match="generated with other parameters"):
        main(["--params", str(params), "--dataset", "synthetic", "--raw", str(raw),
              "--out", str(out)])


def _meta_tree(root: Path, num_classes: int) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    Image.new("RGB", (4, 3)).save(root / "images" / "val" / "a.jpg")
    Image.new("L", (4, 3)).save(root / "masks" / "val" / "a.png")
    write_split(root / "splits" / "val.txt", ["a"])
    meta = {"name": "voc", "num_classes": num_classes, "ignore_index": 255,
            "class_names": [f"c{i}" for i in range(num_classes)], "splits": {}, "sources": {},
            "converter_version": "t", "params": {}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_open_dataset_checks_meta(tmp_path: Path) -> None:
    root = _meta_tree(tmp_path / "a", 20)
    with pytest.raises(ValueError, match=r"meta\.json: num_classes 20 \(20 names\), registry "
                                         r"expects 21"):
        open_dataset("voc", root, "val")
    root = _meta_tree(tmp_path / "b", 21)
    with pytest.raises(ValueError, match=r"meta\.json: class_names differ"):
        open_dataset("voc", root, "val")
    with pytest.raises(FileNotFoundError, match=r"meta\.json: meta file not found"):
        open_dataset("ade20k", tmp_path / "none", "validation")
    with pytest.raises(ValueError, match="'coco' is unlabelled; use open_images"):
        open_dataset("coco", root, "train2017")


def test_open_images_in100_layout(tmp_path: Path) -> None:
    (tmp_path / "train" / "n01").mkdir(parents=True)
    Image.new("RGB", (5, 7)).save(tmp_path / "train" / "n01" / "n01_3.JPEG", format="JPEG")
    write_split(tmp_path / "splits" / "train.txt", ["n01/n01_3"])
    ds = open_images("in100", tmp_path, "train")
    assert ds.path(0) == tmp_path / "train" / "n01" / "n01_3.JPEG"
    assert ds.sizes() == [(7, 5)] and ds[0].image.shape == (7, 5, 3)
