"""neco-pipeline: NeCo dense post-pretraining (arXiv 2408.11054) as a reproducible DVC pipeline.

Packages, in dependency order: ``config`` (typed params, torch-free), ``download`` (fetch and
extract raw files), ``data`` (datasets and their preparation), ``models`` (backbone registry,
ViT wrapper, checkpoints), ``method`` (the NeCo algorithm as pure functions), ``train``
(Lightning wiring), ``evals`` (dense protocols) and ``report`` (tables beside the paper's
numbers). ``io`` (atomic writes, hashing, rank zero) and ``cli`` (one-line user errors) serve them
all. Stage scripts in ``stages/`` parse arguments and call one function of these packages.
"""

__version__ = "0.1.0"
