"""Nearest-neighbour search: chunked torch exact vs faiss flat, approximate recall (§4.7)."""

from __future__ import annotations

import pytest
import torch

from neco.config.evals import AnnConfig, NnBackend
from neco.evals.knn import TorchExactIndex, build_index, exact_topk_torch, recall_at_k

ANN = AnnConfig(ivf_nlist=16, ivf_nprobe=16, hnsw_m=16, hnsw_ef_construction=80, hnsw_ef_search=64)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def _assert_same_sets_up_to_ties(
    s1: torch.Tensor, i1: torch.Tensor, s2: torch.Tensor, i2: torch.Tensor, tol: float = 1e-5
) -> None:
    """Equal neighbour sets, except rows where differing members tie with the k-th score."""
    assert torch.allclose(s1, s2, atol=tol)
    for row in range(i1.shape[0]):
        a, b = set(i1[row].tolist()), set(i2[row].tolist())
        if a != b:
            kth = float(s1[row, -1])
            diff_scores = [float(s1[row, list(i1[row]).index(j)]) for j in a - b]
            assert all(abs(v - kth) < tol for v in diff_scores), row


@pytest.mark.parametrize(("query_chunk", "key_chunk"), [(64, 1000), (37, 7), (1000, 29)])
def test_chunked_torch_exact_equals_full_topk(query_chunk: int, key_chunk: int) -> None:
    q, k = _unit(150, 16, 0), _unit(500, 16, 1)
    s, i = exact_topk_torch(q, k, 10, query_chunk=query_chunk, key_chunk=key_chunk)
    ref_s, ref_i = (q @ k.T).topk(10, dim=1)
    assert i.dtype == torch.int64 and s.shape == (150, 10)
    assert torch.all(s[:, :-1] >= s[:, 1:])  # descending
    _assert_same_sets_up_to_ties(s, i, ref_s, ref_i)
    assert torch.allclose(s, (q[:, None, :] * k[i]).sum(-1), atol=1e-6)  # scores belong to rows


def test_torch_exact_and_faiss_flat_give_the_same_neighbours() -> None:
    pytest.importorskip("faiss")
    q, k = _unit(300, 32, 2), _unit(2000, 32, 3)
    faiss_index = build_index(
        k, backend=NnBackend.exact, ann=ANN, query_chunk=128, key_chunk=512, seed=0
    )
    assert faiss_index.name == "exact-faiss-flat"
    s1, i1 = faiss_index.search(q, 30)
    s2, i2 = TorchExactIndex(k, query_chunk=128, key_chunk=512).search(q, 30)
    _assert_same_sets_up_to_ties(s1, i1, s2, i2)


def test_approximate_backends_report_recall() -> None:
    pytest.importorskip("faiss")
    q, k = _unit(200, 16, 4), _unit(3000, 16, 5)
    exact = exact_topk_torch(q, k, 10, query_chunk=256, key_chunk=4096)[1]
    for backend in (NnBackend.faiss_ivf, NnBackend.faiss_hnsw):
        index = build_index(k, backend=backend, ann=ANN, query_chunk=256, key_chunk=4096, seed=0)
        approx = index.search(q, 10)[1]
        recall = recall_at_k(approx, exact)
        assert 0.8 < recall <= 1.0, (backend, recall)
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[2, 9], [7, 8]])) == 0.25


def test_k_larger_than_bank_is_rejected() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        exact_topk_torch(_unit(3, 4, 0), _unit(5, 4, 1), 6, query_chunk=2, key_chunk=2)


def test_exact_search_runs_without_tf32_and_restores_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real_topk = torch.Tensor.topk

    def spy(self: torch.Tensor, k: int, dim: int = -1) -> torch.return_types.topk:
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
        return real_topk(self, k, dim=dim)

    previous = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        monkeypatch.setattr(torch.Tensor, "topk", spy)
        exact_topk_torch(_unit(5, 4, 0), _unit(9, 4, 1), 3, query_chunk=2, key_chunk=4)
        monkeypatch.undo()
        assert seen and set(seen) == {("highest", False)}
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == (
            "high",
            True,
        )
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]


@pytest.mark.gpu
def test_cuda_chunked_exact_equals_cpu() -> None:
    q, k = _unit(500, 64, 6), _unit(20000, 64, 7)
    s_cpu, i_cpu = exact_topk_torch(q, k, 30, query_chunk=256, key_chunk=4096)
    index = build_index(
        k.cuda(), backend=NnBackend.exact, ann=ANN, query_chunk=256, key_chunk=4096, seed=0
    )
    assert index.name == "exact-torch-fp32"
    s_gpu, i_gpu = index.search(q.cuda(), 30)
    _assert_same_sets_up_to_ties(s_cpu, i_cpu, s_gpu.cpu(), i_gpu.cpu())
