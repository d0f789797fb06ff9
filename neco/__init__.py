"""neco-pipeline: NeCo dense post-pretraining (arXiv 2408.11054) as a reproducible DVC pipeline."""

__version__ = "0.1.0"
