"""The report stage's library: roll up metrics files into ``reports/metrics.json`` and tables.

``collect.py`` reads the per-protocol metrics files the params declare; ``paper.py`` reads the
published numbers (``data/paper/paper_results.csv``) and maps our backbones and protocols onto the
paper's rows; ``settings.py`` compares each result's settings with the paper's and raises the ⚑
flags; ``tables.py`` formats the Table 1a / Table 2 / Figure 2 layouts; ``document.py`` writes
``tables.md``; ``build.py`` is the stage entry (the loss figure comes from ``neco.figures``).
Imports ``neco.config``, ``neco.io``, ``neco.figures`` and ``neco.models.registry``.
"""
