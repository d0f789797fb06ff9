"""Backbones: the registry, the ViT wrapper, checkpoint formats and weight fetching.

``registry.py`` is the leaf: one ``BackboneSpec`` per backbone name (architecture, patch size,
registers, weight source with URL and sha256 where known, key map, paper label), the timm
``default_cfg`` idea; its training recipe lives in ``recipes.py``. ``checkpoints.py`` maps each
published checkpoint layout strictly onto timm keys and reads files without running pickles;
``pos_embed.py`` resamples position embeddings the official way; ``vit.py`` builds the timm
``VisionTransformer`` and the ``Backbone`` wrapper that returns final-norm patch tokens;
``export.py`` writes and reads the self-describing safetensors export; ``fetch.py`` and
``init_weights.py`` resolve and download a backbone's initial weights. Imports ``neco.config``,
``neco.io`` and ``neco.download``; never the method, training or evaluation packages.
"""
