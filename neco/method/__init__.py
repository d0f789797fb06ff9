"""The NeCo method (arXiv 2408.11054) as pure functions: no Lightning, no I/O, no params.yaml.

Reading path: one training step, in order (method.md §2-§11). Before training, ``crops.py``
samples 2 global + 4 local RandomResizedCrop boxes per image under the overlap rule and computes
the pairwise overlap boxes in each crop's frame; ``manifest.py`` stores them in a Parquet file, so
geometry is data. Per sample, ``augment.py`` cuts the views from the manifest boxes and applies
colour jitter, greyscale and blur in the loader workers, or ``tensor_augment.py`` does the same
batched on the training device from parameters drawn in the workers (``train.augment_device``).
Per step, ``schedules.py`` gives lr, weight decay and the EMA
momentum on one cosine and ``ema_update`` moves the teacher; the teacher embeds the global crops
and the student all crops, each through its ``heads.py`` projection head; ``roi.py`` orders the 10
(teacher, student) pairs and ROI-Aligns both maps onto the shared region (k x k queries);
``references.py`` supplies the n reference patches (FIFO queue per global crop, or in-batch);
``loss.py`` computes cosine similarities of queries to references, sorts them with the
differentiable sorting network of ``sorting.py`` (comparator layouts in ``sorting_networks.py``)
and takes the cross-entropy between the teacher's and the student's soft permutation matrices
(``loss_from_maps`` is the whole loss); with ``train.loss.implementation: fused``,
``fused_loss.py`` does sort, sort, cross-entropy and backward per query in one pass instead
(a C kernel, ``fused_cpu.py``, on the CPU; ``fused_triton.py`` on CUDA). ``optim.py`` builds
the four AdamW groups and applies ``trainable_blocks``; ``precision.py`` holds the TF32-off
context the loss (and the exact kNN search of the evaluation) run under. This package imports
only ``neco.config`` and ``neco.io``.
"""
