"""Tests for ``neco.method.references``: queue banks, push selection, in-batch references (§6)."""

from __future__ import annotations

import pytest
import torch

from neco.method.references import ReferenceQueue, inbatch_references, select_push_tokens

torch.set_num_threads(1)


def rows(start: int, count: int, dim: int = 3) -> torch.Tensor:
    """Rows whose entries all equal their id (start .. start+count-1), never zero."""
    return torch.arange(start, start + count, dtype=torch.float32).unsqueeze(1).repeat(1, dim)


def test_per_bank_counters_and_empty_bank() -> None:
    q = ReferenceQueue(num_banks=2, queue_length=8, dim=3)
    q.push(0, rows(1, 5))
    assert q.filled.tolist() == [5, 0] and q.ptr.tolist() == [5, 0]
    with pytest.raises(RuntimeError, match="bank 1 is empty"):
        q.sample(1, batch_size=1, n=2, generator=torch.Generator())
    q.push(1, rows(100, 2))
    assert q.filled.tolist() == [5, 2] and q.ptr.tolist() == [5, 2]


def test_fifo_wraps_around() -> None:
    q = ReferenceQueue(num_banks=1, queue_length=8, dim=3)
    q.push(0, rows(1, 5))  # slots 0-4 = 1..5
    q.push(0, rows(11, 5))  # slots 5,6,7,0,1 = 11..15
    assert q.filled.item() == 8 and q.ptr.item() == 2
    assert q.banks[0, :, 0].tolist() == [14, 15, 3, 4, 5, 11, 12, 13]
    q.push(0, rows(21, 20))  # more than the bank: keep the last 8 (28..40), in FIFO order
    assert q.ptr.item() == (2 + 8) % 8 and q.filled.item() == 8
    assert sorted(q.banks[0, :, 0].tolist()) == list(range(33, 41))
    assert q.banks[0, 2, 0].item() == 33  # oldest kept row written at the old pointer


def test_sample_only_filled_slots_and_official_rule() -> None:
    q = ReferenceQueue(num_banks=1, queue_length=16, dim=3)
    q.push(0, rows(1, 3))
    out = q.sample(0, batch_size=2, n=8, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8, 3)
    assert set(out[..., 0].flatten().tolist()) <= {1.0, 2.0, 3.0}  # never an empty (zero) slot
    # Filled bank: exactly the first B*n entries of randperm(queue_length) (no repeats).
    q.push(0, rows(4, 13))
    out = q.sample(0, batch_size=2, n=8, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))[:16]
    assert out[..., 0].flatten().tolist() == (perm + 1).float().tolist()
    with pytest.raises(ValueError, match="train.loss.queue_length"):
        q.sample(0, batch_size=3, n=8, generator=torch.Generator())


def test_state_dict_round_trip_resumes_queue() -> None:
    q = ReferenceQueue(num_banks=2, queue_length=8, dim=3)
    q.push(0, rows(1, 6))
    q.push(1, rows(50, 3))
    state = q.state_dict()
    assert set(state) == {"banks", "ptr", "filled"}
    fresh = ReferenceQueue(num_banks=2, queue_length=8, dim=3)
    fresh.load_state_dict(state)
    for bank in (0, 1):
        a = q.sample(bank, batch_size=2, n=3, generator=torch.Generator().manual_seed(2))
        b = fresh.sample(bank, batch_size=2, n=3, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
    fresh.push(0, rows(7, 4))
    assert fresh.ptr.tolist() == [2, 3] and fresh.filled.tolist() == [8, 3]


def test_queue_is_not_a_module_and_loads_strictly() -> None:
    """Not an nn.Module (DDP broadcasts every buffer of the wrapped module from rank 0 each
    forward, which would overwrite the other ranks' banks); its state loads strictly."""
    q = ReferenceQueue(num_banks=2, queue_length=8, dim=3)
    assert not isinstance(q, torch.nn.Module)
    holder = torch.nn.Module()
    holder.queue = q  # type: ignore[assignment]  # a plain attribute: no buffers, no state
    assert not list(holder.buffers()) and not holder.state_dict()
    q.push(0, rows(1, 3))
    state = q.state_dict()
    q.push(0, rows(9, 1))
    assert state["filled"].tolist() == [3, 0]  # a copy, not a view of the live banks
    with pytest.raises(KeyError, match="expected keys"):
        q.load_state_dict({"banks": state["banks"]})
    with pytest.raises(ValueError, match=r"banks is \(2, 4, 3\)"):
        ReferenceQueue(num_banks=2, queue_length=8, dim=3).load_state_dict(
            ReferenceQueue(num_banks=2, queue_length=4, dim=3).state_dict()
        )
    assert q.to("cpu") is q and q.device == torch.device("cpu")


def test_select_push_tokens() -> None:
    b, d, h, w = 3, 4, 5, 5
    tmap = torch.arange(b * d * h * w, dtype=torch.float32).reshape(b, d, h, w)
    tokens = tmap.flatten(2).transpose(1, 2).reshape(-1, d)
    out = select_push_tokens(
        tmap, per_image=10, queue_length=64, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (30, d)
    as_set = {tuple(r) for r in tokens.tolist()}
    assert all(tuple(r) in as_set for r in out.tolist())
    assert len({tuple(r) for r in out.tolist()}) == 30  # without replacement
    assert select_push_tokens(
        tmap, per_image=10, queue_length=16, generator=torch.Generator()
    ).shape == (16, d)
    with pytest.raises(ValueError, match="queue_push_per_image"):
        select_push_tokens(tmap, per_image=30, queue_length=1000, generator=torch.Generator())
    grad_map = tmap.clone().requires_grad_()
    assert not select_push_tokens(
        grad_map, per_image=2, queue_length=64, generator=torch.Generator()
    ).requires_grad


@pytest.mark.parametrize("n", [4, 9, 25])
def test_inbatch_references(n: int) -> None:
    b, m, d = 2, 9, 3
    f_t = torch.arange(b * m, dtype=torch.float32).unsqueeze(1).repeat(1, d).reshape(b, m, d)
    f_t.requires_grad_()
    out = inbatch_references(f_t, n=n, generator=torch.Generator().manual_seed(0))
    assert out.shape == (b, n, d)
    assert out.requires_grad  # keeps the input's autograd state (no-teacher ablation)
    assert not inbatch_references(f_t.detach(), n=n, generator=torch.Generator()).requires_grad
    ids = out[..., 0].flatten().long()
    assert ids.min() >= 0 and ids.max() < b * m
    counts = torch.bincount(ids, minlength=b * m)
    assert counts.max() <= -(-b * n // (b * m))  # tiled, each patch at most ceil(B*n/(B*M)) times
    again = inbatch_references(f_t, n=n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
