"""Backbones: the registry, the ViT wrapper, checkpoint formats and weight fetching.

``registry.py`` is the leaf: one ``BackboneSpec`` per backbone name (architecture, patch size,
registers, weight source with URL and sha256 where known, key map, training recipe, paper
labels), the timm ``default_cfg`` idea, so adding a backbone is one entry; ``recipes.py``
resolves the recipe against explicit params. ``checkpoints.py`` maps each
published checkpoint layout strictly onto timm keys and reads files without running pickles;
``pos_embed.py`` resamples position embeddings the official way; ``vit.py`` builds the timm
``VisionTransformer`` (a subclass overriding only ``_pos_embed`` with that rule) and the
``Backbone`` wrapper that returns its final-norm patch tokens;
``export.py`` writes and reads the self-describing safetensors export; ``fetch.py`` and
``init_weights.py`` resolve and download a backbone's initial weights; ``release.py`` names the
released NeCo checkpoints (HF ``FunAILab/NeCo``) and fetches them through ``huggingface_hub``.
Imports ``neco.config``, ``neco.io`` and ``neco.download``; never the method, training or
evaluation packages.
"""
