"""Datasets: the registry, the canonical prepared layout, readers, and one module per source.

``registry.py`` names every raw source (``datasets.<name>`` params block, fetch and prepare
functions) and every evaluation dataset (classes, ignore index, splits); ``reader.py`` reads the
canonical prepared layout (``images/``, ``masks/``, ``splits/``, ``meta.json``) with errors that
name the file; ``meta.py``, ``label_png.py``, ``class_names.py`` and ``types.py`` are its
helpers; ``hbird_sets.py`` installs the Hummingbird low-shot file lists; ``staging.py`` publishes
a prepared tree atomically. ``sources/`` holds the preparation of each source (VOC+SBD, ADE20K,
COCO-Things/Stuff, ImageNet-100 and the procedural synthetic demo dataset). Imports
``neco.config``, ``neco.io`` and ``neco.download``.
"""
