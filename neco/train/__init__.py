"""NeCo training with Lightning: wiring only, the math lives in ``neco.method``.

``datamodule.py`` turns a prepared dataset and the crop manifest into batches of the 6 augmented
views plus their overlap boxes; ``module.py`` is the ``LightningModule`` (student and EMA teacher,
optimiser groups, the per-step schedules, the loss call, resumable RNG state); ``run.py`` is the
entry the train stage calls: it resolves the recipe, builds the Trainer (devices, strategy,
precision, dvclive logger, checkpoints), resumes when a matching checkpoint exists, turns
SIGTERM/SIGINT into a resumable stop and exports the student backbone; ``resume.py`` holds the
fault tolerance (atomic checkpoint writes, checkpoint verification, the resume key over the
configuration and the inputs' content). Imports ``neco.config``, ``neco.io``, ``neco.method``,
``neco.models`` and ``neco.data``.
"""
