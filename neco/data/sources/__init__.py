"""One module per raw dataset source: how its archives become the canonical prepared layout.

``voc`` (VOC 2012 + SBD trainaug), ``ade20k``, ``coco`` (panoptic to COCO-Things and
COCO-Stuff, with ``coco_categories`` and ``coco_masks``), ``in100`` (ImageNet-100 from the
ImageNet archives, class list ``imagenet100.txt``) and ``synthetic`` (the offline demo, drawn by
``synthetic_images`` from the primitives of ``synthetic_shapes``). The registry reaches these by
name (``neco.data.registry.SOURCES``); they import ``neco.data``'s helpers and ``neco.download``.
"""
