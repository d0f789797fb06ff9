"""Dense evaluation (evaluation.md): feature extraction and the three protocols.

``extractor.py`` is the feature-extractor contract (images to final-norm patch tokens) and
``extract.py`` runs it over a dataset deterministically; ``models.py`` loads the ``init`` and
``neco`` backbones under evaluation; ``features.py`` (the features stage) caches their val tokens
through ``cache.py``; ``transforms.py`` and ``metrics.py`` hold the reference image/mask ops and
the dataset-level confusion, Hungarian and many-to-one scoring; ``linear.py`` (linear probe),
``overcluster.py`` (k-means overclustering) and ``hbird.py`` with ``hbird_memory.py``,
``hbird_query.py`` and ``knn.py`` (Hummingbird retrieval) are the protocols, each a pure function
returning a typed result from ``results.py``; ``protocols.py`` is their registry, ``run.py`` the
eval stage's entry and ``inputs.py`` its stage-side inputs (low-shot subsets, figures). Imports
``neco.config``, ``neco.io``, ``neco.figures``, ``neco.data``, ``neco.models`` and, for shared
augmentation constants and the TF32-off context, ``neco.method``.
"""
