"""Full-precision float32 blocks: TF32 off for matmuls and cuDNN (method.md D3, evaluation.md E2).

Torch-only, so both the method (loss similarities and sorting) and the evals (exact kNN) use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Disable TF32 in float32 matmuls and cuDNN convolutions inside the block.

    Sets ``torch.set_float32_matmul_precision("highest")`` (IEEE float32 for CUDA and oneDNN
    matmuls) and ``torch.backends.cudnn.allow_tf32 = False``; on exit, also on an exception,
    restores the previous precision string (so ``"medium"`` comes back as ``"medium"``, which
    saving ``matmul.allow_tf32`` could not express) and the previous cuDNN flag.

    Uses torch's legacy flags, as the rest of the project does: mixing them with the per-backend
    ``fp32_precision`` API makes torch's legacy getters raise.
    """
    matmul = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn
