"""Inner-product k-nearest-neighbour search behind one small interface (evaluation.md §4.7).

* ``exact`` (project default, decision E2): keys on CUDA use a chunked torch matmul with a running
  top-k merge under strict fp32 (TF32 off); keys on the CPU use a faiss ``IndexFlatIP`` (or the
  torch path when faiss is not installed, e.g. on the GPU machine).
* ``faiss_ivf`` / ``faiss_hnsw``: approximate; callers must report :func:`recall_at_k`.

faiss is imported lazily, only when a faiss index is built.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from neco.config.evals import AnnConfig, NnBackend
from neco.method.precision import no_tf32


class KnnIndex(Protocol):
    """A built index over ``(M, D)`` keys."""

    name: str

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k by inner product: float32 ``(Q, k)`` scores (descending) and int64 ``(Q, k)`` rows,
        on the device of ``queries``."""
        ...


def _check_k(k: int, num_keys: int) -> None:
    if not 0 < k <= num_keys:
        raise ValueError(f"kNN: k must be in [1, number of keys = {num_keys}], got k={k}")


def exact_topk_torch(
    queries: torch.Tensor, keys: torch.Tensor, k: int, *, query_chunk: int, key_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k by blocks: ``Q_b K_cᵀ``, ``topk``, merge with the running top-k.

    Args:
        queries: float32 ``(Q, D)``.
        keys: float32 ``(M, D)`` on the same device.
        k: neighbours per query.
        query_chunk: query rows per block.
        key_chunk: key rows per block (score blocks are ``query_chunk × key_chunk`` fp32).

    Returns:
        float32 ``(Q, k)`` scores in descending order and int64 ``(Q, k)`` key rows.
    """
    _check_k(k, keys.shape[0])
    out_s, out_i = [], []
    with no_tf32():
        for q0 in range(0, queries.shape[0], query_chunk):
            q = queries[q0 : q0 + query_chunk]
            best_s = q.new_empty((q.shape[0], 0))
            best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
            for k0 in range(0, keys.shape[0], key_chunk):
                scores = q @ keys[k0 : k0 + key_chunk].T
                s, i = scores.topk(min(k, scores.shape[1]), dim=1)
                cand_s, cand_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + k0], 1)
                best_s, pos = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
                best_i = cand_i.gather(1, pos)
            out_s.append(best_s)
            out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


class TorchExactIndex:
    """Exact search by chunked torch matmul on the keys' device."""

    def __init__(self, keys: torch.Tensor, *, query_chunk: int, key_chunk: int) -> None:
        self.keys = keys
        self.query_chunk = query_chunk
        self.key_chunk = key_chunk
        self.name = "exact-torch-fp32"

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, i = exact_topk_torch(
            queries.to(self.keys.device, torch.float32),
            self.keys,
            k,
            query_chunk=self.query_chunk,
            key_chunk=self.key_chunk,
        )
        return s.to(queries.device), i.to(queries.device)


class FaissIndex:
    """A faiss inner-product index on the CPU (flat = exact, IVF or HNSW = approximate)."""

    def __init__(self, index: Any, name: str, num_keys: int, query_chunk: int) -> None:
        self.index = index
        self.name = name
        self.num_keys = num_keys
        self.query_chunk = query_chunk

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_k(k, self.num_keys)
        x = queries.detach().to("cpu", torch.float32).numpy()
        out_s, out_i = [], []
        for q0 in range(0, x.shape[0], self.query_chunk):
            s, i = self.index.search(np.ascontiguousarray(x[q0 : q0 + self.query_chunk]), k)
            out_s.append(torch.from_numpy(s))
            out_i.append(torch.from_numpy(i.astype(np.int64)))
        return torch.cat(out_s).to(queries.device), torch.cat(out_i).to(queries.device)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_index(
    keys: torch.Tensor,
    *,
    backend: NnBackend,
    ann: AnnConfig,
    query_chunk: int,
    key_chunk: int,
    seed: int,
) -> KnnIndex:
    """Build the search index of ``backend`` over float32 ``(M, D)`` keys.

    Args:
        keys: the key bank; for ``exact`` its device picks the implementation (CUDA: torch
            chunked; CPU: faiss flat, torch chunked if faiss is missing).
        backend: exact or approximate backend.
        ann: approximate-search parameters (unused by ``exact``).
        query_chunk: query rows per search block.
        key_chunk: key rows per block of the torch path.
        seed: seed of the IVF coarse quantiser's k-means.

    Returns:
        The index; its ``name`` is recorded in results.
    """
    if keys.ndim != 2:
        raise ValueError(f"build_index: keys must be (M, D), got {tuple(keys.shape)}")
    if backend is NnBackend.exact and (keys.is_cuda or not _faiss_available()):
        return TorchExactIndex(keys, query_chunk=query_chunk, key_chunk=key_chunk)
    import faiss

    x = np.ascontiguousarray(keys.detach().to("cpu", torch.float32).numpy())
    dim = x.shape[1]
    index: Any
    if backend is NnBackend.exact:
        index = faiss.IndexFlatIP(dim)
        name = "exact-faiss-flat"
    elif backend is NnBackend.faiss_ivf:
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(dim), dim, ann.ivf_nlist, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = seed
        index.train(x)
        index.nprobe = ann.ivf_nprobe
        name = f"faiss-ivf(nlist={ann.ivf_nlist},nprobe={ann.ivf_nprobe})"
    elif backend is NnBackend.faiss_hnsw:
        index = faiss.IndexHNSWFlat(dim, ann.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ann.hnsw_ef_construction
        index.hnsw.efSearch = ann.hnsw_ef_search
        name = f"faiss-hnsw(M={ann.hnsw_m},efC={ann.hnsw_ef_construction},efS={ann.hnsw_ef_search})"
    else:
        raise ValueError(f"unknown nn backend {backend!r}")
    index.add(x)
    return FaissIndex(index, name, x.shape[0], query_chunk)


def recall_at_k(approx_rows: torch.Tensor, exact_rows: torch.Tensor) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / k`` for int ``(Q, k)`` row sets."""
    if approx_rows.shape != exact_rows.shape:
        raise ValueError(f"recall_at_k: shapes {approx_rows.shape} != {exact_rows.shape}")
    a, e = approx_rows.cpu(), exact_rows.cpu()
    hits = (a.unsqueeze(2) == e.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.double().mean() / a.shape[1])
