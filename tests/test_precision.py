"""The one TF32-off context (:func:`neco.method.precision.no_tf32`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from neco.method.precision import no_tf32


def _state() -> tuple[str, bool, bool]:
    return (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


@pytest.fixture(autouse=True)
def _restore_flags() -> Iterator[None]:
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


@pytest.mark.parametrize("matmul", ["highest", "high", "medium"])
@pytest.mark.parametrize("cudnn", [True, False])
def test_no_tf32_disables_and_restores(matmul: str, cudnn: bool) -> None:
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn
    before = _state()
    with no_tf32():
        assert _state() == ("highest", False, False)
        with no_tf32():  # nests
            assert _state() == ("highest", False, False)
        assert _state() == ("highest", False, False)
    assert _state() == before  # "medium" comes back as "medium", not "high"


def test_no_tf32_restores_on_exception() -> None:
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    with pytest.raises(ValueError, match="inside"), no_tf32():
        assert _state() == ("highest", False, False)
        raise ValueError("inside")
    assert _state() == ("high", True, True)
