"""COCO panoptic (133) and stuff (92) category tables and the super-class maps (datasets.md §4).

The tables are data transcribed from datasets.md §4.2/§4.3 (they equal
``cocodataset/panopticapi:panoptic_coco_categories.json`` without ``color``, and the
``categories`` of ``stuff_{train,val}2017.json``). The prepare stage builds its maps from the
``categories`` of the val JSONs, like the reference (``vpariza/NeCo:data/coco/
coco_data_module.py``), and checks the resulting class names against ``THINGS_CLASS_NAMES`` /
``STUFF_CLASS_NAMES``; fixtures use the tables to write complete JSONs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from neco.data.errors import DataError

IGNORE = 255
MAX_PANOPTIC_ID = 200  # panoptic ids above this (and unknown ids) map to IGNORE (§4.2)
STUFF_OTHER_ID = 183  # "other" (thing pixels) in the stuff pixelmaps -> IGNORE (§4.3)

# COCO-Things: the 12 thing super-classes, sorted alphabetically (§4.2 idx order).
THINGS_CLASS_NAMES: tuple[str, ...] = (
    "accessory", "animal", "appliance", "electronic", "food", "furniture", "indoor", "kitchen",
    "outdoor", "person", "sports", "vehicle",
)  # fmt: skip

# COCO-Stuff: the 15 stuff super-classes minus "other", sorted alphabetically (§4.3).
STUFF_CLASS_NAMES: tuple[str, ...] = (
    "building", "ceiling", "floor", "food-stuff", "furniture-stuff", "ground", "plant",
    "raw-material", "sky", "solid", "structural", "textile", "wall", "water", "window",
)  # fmt: skip

# (id, name, supercategory, isthing): 80 things + 53 stuff, by id.
PANOPTIC_CATEGORIES: tuple[tuple[int, str, str, int], ...] = (
    (1, 'person', 'person', 1), (2, 'bicycle', 'vehicle', 1), (3, 'car', 'vehicle', 1),
    (4, 'motorcycle', 'vehicle', 1), (5, 'airplane', 'vehicle', 1), (6, 'bus', 'vehicle', 1),
    (7, 'train', 'vehicle', 1), (8, 'truck', 'vehicle', 1), (9, 'boat', 'vehicle', 1),
    (10, 'traffic light', 'outdoor', 1), (11, 'fire hydrant', 'outdoor', 1),
    (13, 'stop sign', 'outdoor', 1), (14, 'parking meter', 'outdoor', 1),
    (15, 'bench', 'outdoor', 1), (16, 'bird', 'animal', 1), (17, 'cat', 'animal', 1),
    (18, 'dog', 'animal', 1), (19, 'horse', 'animal', 1), (20, 'sheep', 'animal', 1),
    (21, 'cow', 'animal', 1), (22, 'elephant', 'animal', 1), (23, 'bear', 'animal', 1),
    (24, 'zebra', 'animal', 1), (25, 'giraffe', 'animal', 1), (27, 'backpack', 'accessory', 1),
    (28, 'umbrella', 'accessory', 1), (31, 'handbag', 'accessory', 1), (32, 'tie', 'accessory', 1),
    (33, 'suitcase', 'accessory', 1), (34, 'frisbee', 'sports', 1), (35, 'skis', 'sports', 1),
    (36, 'snowboard', 'sports', 1), (37, 'sports ball', 'sports', 1), (38, 'kite', 'sports', 1),
    (39, 'baseball bat', 'sports', 1), (40, 'baseball glove', 'sports', 1),
    (41, 'skateboard', 'sports', 1), (42, 'surfboard', 'sports', 1),
    (43, 'tennis racket', 'sports', 1), (44, 'bottle', 'kitchen', 1),
    (46, 'wine glass', 'kitchen', 1), (47, 'cup', 'kitchen', 1), (48, 'fork', 'kitchen', 1),
    (49, 'knife', 'kitchen', 1), (50, 'spoon', 'kitchen', 1), (51, 'bowl', 'kitchen', 1),
    (52, 'banana', 'food', 1), (53, 'apple', 'food', 1), (54, 'sandwich', 'food', 1),
    (55, 'orange', 'food', 1), (56, 'broccoli', 'food', 1), (57, 'carrot', 'food', 1),
    (58, 'hot dog', 'food', 1), (59, 'pizza', 'food', 1), (60, 'donut', 'food', 1),
    (61, 'cake', 'food', 1), (62, 'chair', 'furniture', 1), (63, 'couch', 'furniture', 1),
    (64, 'potted plant', 'furniture', 1), (65, 'bed', 'furniture', 1),
    (67, 'dining table', 'furniture', 1), (70, 'toilet', 'furniture', 1),
    (72, 'tv', 'electronic', 1), (73, 'laptop', 'electronic', 1), (74, 'mouse', 'electronic', 1),
    (75, 'remote', 'electronic', 1), (76, 'keyboard', 'electronic', 1),
    (77, 'cell phone', 'electronic', 1), (78, 'microwave', 'appliance', 1),
    (79, 'oven', 'appliance', 1), (80, 'toaster', 'appliance', 1), (81, 'sink', 'appliance', 1),
    (82, 'refrigerator', 'appliance', 1), (84, 'book', 'indoor', 1), (85, 'clock', 'indoor', 1),
    (86, 'vase', 'indoor', 1), (87, 'scissors', 'indoor', 1), (88, 'teddy bear', 'indoor', 1),
    (89, 'hair drier', 'indoor', 1), (90, 'toothbrush', 'indoor', 1), (92, 'banner', 'textile', 0),
    (93, 'blanket', 'textile', 0), (95, 'bridge', 'building', 0),
    (100, 'cardboard', 'raw-material', 0), (107, 'counter', 'furniture-stuff', 0),
    (109, 'curtain', 'textile', 0), (112, 'door-stuff', 'furniture-stuff', 0),
    (118, 'floor-wood', 'floor', 0), (119, 'flower', 'plant', 0), (122, 'fruit', 'food-stuff', 0),
    (125, 'gravel', 'ground', 0), (128, 'house', 'building', 0),
    (130, 'light', 'furniture-stuff', 0), (133, 'mirror-stuff', 'furniture-stuff', 0),
    (138, 'net', 'structural', 0), (141, 'pillow', 'textile', 0), (144, 'platform', 'ground', 0),
    (145, 'playingfield', 'ground', 0), (147, 'railroad', 'ground', 0), (148, 'river', 'water', 0),
    (149, 'road', 'ground', 0), (151, 'roof', 'building', 0), (154, 'sand', 'ground', 0),
    (155, 'sea', 'water', 0), (156, 'shelf', 'furniture-stuff', 0), (159, 'snow', 'ground', 0),
    (161, 'stairs', 'furniture-stuff', 0), (166, 'tent', 'building', 0),
    (168, 'towel', 'textile', 0), (171, 'wall-brick', 'wall', 0), (175, 'wall-stone', 'wall', 0),
    (176, 'wall-tile', 'wall', 0), (177, 'wall-wood', 'wall', 0), (178, 'water-other', 'water', 0),
    (180, 'window-blind', 'window', 0), (181, 'window-other', 'window', 0),
    (184, 'tree-merged', 'plant', 0), (185, 'fence-merged', 'structural', 0),
    (186, 'ceiling-merged', 'ceiling', 0), (187, 'sky-other-merged', 'sky', 0),
    (188, 'cabinet-merged', 'furniture-stuff', 0), (189, 'table-merged', 'furniture-stuff', 0),
    (190, 'floor-other-merged', 'floor', 0), (191, 'pavement-merged', 'ground', 0),
    (192, 'mountain-merged', 'solid', 0), (193, 'grass-merged', 'plant', 0),
    (194, 'dirt-merged', 'ground', 0), (195, 'paper-merged', 'raw-material', 0),
    (196, 'food-other-merged', 'food-stuff', 0), (197, 'building-other-merged', 'building', 0),
    (198, 'rock-merged', 'solid', 0), (199, 'wall-other-merged', 'wall', 0),
    (200, 'rug-merged', 'textile', 0),
)  # fmt: skip

# (id, name, supercategory): ids 92..182 stuff plus 183 "other", by id.
STUFF_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (92, 'banner', 'textile'), (93, 'blanket', 'textile'), (94, 'branch', 'plant'),
    (95, 'bridge', 'building'), (96, 'building-other', 'building'), (97, 'bush', 'plant'),
    (98, 'cabinet', 'furniture-stuff'), (99, 'cage', 'structural'),
    (100, 'cardboard', 'raw-material'), (101, 'carpet', 'floor'),
    (102, 'ceiling-other', 'ceiling'), (103, 'ceiling-tile', 'ceiling'), (104, 'cloth', 'textile'),
    (105, 'clothes', 'textile'), (106, 'clouds', 'sky'), (107, 'counter', 'furniture-stuff'),
    (108, 'cupboard', 'furniture-stuff'), (109, 'curtain', 'textile'),
    (110, 'desk-stuff', 'furniture-stuff'), (111, 'dirt', 'ground'),
    (112, 'door-stuff', 'furniture-stuff'), (113, 'fence', 'structural'),
    (114, 'floor-marble', 'floor'), (115, 'floor-other', 'floor'), (116, 'floor-stone', 'floor'),
    (117, 'floor-tile', 'floor'), (118, 'floor-wood', 'floor'), (119, 'flower', 'plant'),
    (120, 'fog', 'water'), (121, 'food-other', 'food-stuff'), (122, 'fruit', 'food-stuff'),
    (123, 'furniture-other', 'furniture-stuff'), (124, 'grass', 'plant'),
    (125, 'gravel', 'ground'), (126, 'ground-other', 'ground'), (127, 'hill', 'solid'),
    (128, 'house', 'building'), (129, 'leaves', 'plant'), (130, 'light', 'furniture-stuff'),
    (131, 'mat', 'textile'), (132, 'metal', 'raw-material'),
    (133, 'mirror-stuff', 'furniture-stuff'), (134, 'moss', 'plant'), (135, 'mountain', 'solid'),
    (136, 'mud', 'ground'), (137, 'napkin', 'textile'), (138, 'net', 'structural'),
    (139, 'paper', 'raw-material'), (140, 'pavement', 'ground'), (141, 'pillow', 'textile'),
    (142, 'plant-other', 'plant'), (143, 'plastic', 'raw-material'), (144, 'platform', 'ground'),
    (145, 'playingfield', 'ground'), (146, 'railing', 'structural'), (147, 'railroad', 'ground'),
    (148, 'river', 'water'), (149, 'road', 'ground'), (150, 'rock', 'solid'),
    (151, 'roof', 'building'), (152, 'rug', 'textile'), (153, 'salad', 'food-stuff'),
    (154, 'sand', 'ground'), (155, 'sea', 'water'), (156, 'shelf', 'furniture-stuff'),
    (157, 'sky-other', 'sky'), (158, 'skyscraper', 'building'), (159, 'snow', 'ground'),
    (160, 'solid-other', 'solid'), (161, 'stairs', 'furniture-stuff'), (162, 'stone', 'solid'),
    (163, 'straw', 'plant'), (164, 'structural-other', 'structural'),
    (165, 'table', 'furniture-stuff'), (166, 'tent', 'building'),
    (167, 'textile-other', 'textile'), (168, 'towel', 'textile'), (169, 'tree', 'plant'),
    (170, 'vegetable', 'food-stuff'), (171, 'wall-brick', 'wall'), (172, 'wall-concrete', 'wall'),
    (173, 'wall-other', 'wall'), (174, 'wall-panel', 'wall'), (175, 'wall-stone', 'wall'),
    (176, 'wall-tile', 'wall'), (177, 'wall-wood', 'wall'), (178, 'water-other', 'water'),
    (179, 'waterdrops', 'water'), (180, 'window-blind', 'window'), (181, 'window-other', 'window'),
    (182, 'wood', 'solid'), (183, 'other', 'other'),
)  # fmt: skip


def panoptic_categories_json() -> list[dict[str, Any]]:
    """The 133 panoptic categories as in ``panoptic_val2017.json`` (no ``color``)."""
    return [{"id": i, "name": n, "supercategory": s, "isthing": t}
            for i, n, s, t in PANOPTIC_CATEGORIES]


def stuff_categories_json() -> list[dict[str, Any]]:
    """The 92 stuff categories as in ``stuff_val2017.json``."""
    return [{"id": i, "name": n, "supercategory": s} for i, n, s in STUFF_CATEGORIES]


def _field(cat: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    value = cat.get(key) if isinstance(cat, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DataError(f"{source}: category {cat!r} needs {kind.__name__} field {key!r}")
    return value


def things_lut(categories: Sequence[Mapping[str, Any]], *,
               source: str) -> tuple[np.ndarray, list[str]]:
    """Panoptic category id -> COCO-Things class (§4.2).

    Class index = position of the ``supercategory`` in the alphabetically sorted set of
    supercategories over ``isthing == 1``. Stuff (``isthing == 0``), void (0), ids above 200
    and unknown ids map to 255.

    Args:
        categories: the panoptic JSON ``categories`` array.
        source: file name for error messages.

    Returns:
        ``lut`` ``uint8 (256,)`` indexed by category id, and the class names.
    """
    things = {}
    for cat in categories:
        cid = _field(cat, "id", int, source)
        _field(cat, "isthing", int, source)
        if cat["isthing"] == 1:
            things[cid] = _field(cat, "supercategory", str, source)
    names = sorted(set(things.values()))
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for cid, sup in things.items():
        if 0 < cid <= MAX_PANOPTIC_ID:
            lut[cid] = names.index(sup)
    return lut, names


def stuff_lut(categories: Sequence[Mapping[str, Any]], *,
              source: str) -> tuple[np.ndarray, list[str]]:
    """Stuff pixelmap value -> COCO-Stuff class (§4.3).

    Class index = position of the ``supercategory`` in the sorted set of supercategories minus
    "other". 0 (unlabelled), 183 "other" and values absent from ``categories`` map to 255.

    Args:
        categories: the stuff JSON ``categories`` array.
        source: file name for error messages.

    Returns:
        ``lut`` ``uint8 (256,)`` indexed by pixel value, and the class names.
    """
    stuff = {}
    for cat in categories:
        cid = _field(cat, "id", int, source)
        sup = _field(cat, "supercategory", str, source)
        if not 0 < cid < 256:
            raise DataError(f"{source}: stuff category id {cid} outside 1..255")
        if sup != "other":
            stuff[cid] = sup
    names = sorted(set(stuff.values()))
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for cid, sup in stuff.items():
        lut[cid] = names.index(sup)
    return lut, names


def reference_luts() -> tuple[np.ndarray, np.ndarray]:
    """The things and stuff LUTs built from the transcribed §4.2/§4.3 tables."""
    return (things_lut(panoptic_categories_json(), source="§4.2")[0],
            stuff_lut(stuff_categories_json(), source="§4.3")[0])
