"""Sorting-network construction for the differentiable sort (method.md §8, D4).

A network is a list of layers of disjoint comparators on wires ``0..n'-1``; comparator
``(lo, hi)``, ``lo < hi``, writes the minimum to ``lo`` and the maximum to ``hi`` (ascending) or
the other way round (descending). The comparator lists equal those of the ``diffsort`` package
(Petersen et al., ICML 2021, https://arxiv.org/abs/2105.04019; ICLR 2022,
https://arxiv.org/abs/2203.09630; code https://github.com/Felix-Petersen/diffsort) with its
identity comparators left out:

* **bitonic:** ``n' = 2**ceil(log2 n)`` wires, ``K = log2 n'`` blocks, block ``b`` has ``b + 1``
  layers; layer ``l`` compares ``i`` with ``i + 2**(b - l)``, descending when
  ``(i // 2**(b + 1))`` is odd. The **first** ``p = n' - n`` wires are dropped: a comparator
  touching a dropped wire is the identity on the real wire, so it is omitted here. Input ``i``
  enters wire ``p + i`` and rank ``k`` leaves wire ``p + k``.
* **odd_even** (transposition): ``n`` layers, all ascending, pairs ``(0,1),(2,3),...`` then
  ``(1,2),(3,4),...``; the end wires that have no partner pass through.

Besides the comparator lists, every layer carries the same comparators as *segments*: strided
windows of the wire axis that the executor turns into tensor views (no gathers), and the size
of the aligned wire *groups* that cannot have exchanged mass yet (bitonic block ``b``:
``2**(b + 1)``), which lets the executor keep the relaxed permutation block-diagonal.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from neco.config.method import SortNetwork

__all__ = [
    "Layer", "NetworkPlan", "Segment", "SortNetwork", "build_network", "comparator_rows",
    "descending_masks", "identity_blocks", "regroup", "wire_views",
]


@dataclass(frozen=True)
class Segment:
    """Comparators ``lo = start + q * period + lane + j``, ``hi = lo + distance``.

    ``q < num_chunks`` and ``j < length``; the order is ``q``-major, which is ascending ``lo``.
    The wires ``start .. start + num_chunks * period - 1`` viewed as ``(num_chunks, period)``
    give the lower wires as ``[:, lane:lane + length]`` and the upper wires as
    ``[:, lane + distance:lane + distance + length]``.
    """

    start: int
    num_chunks: int
    period: int
    lane: int
    length: int
    distance: int

    @property
    def size(self) -> int:
        """Number of comparators in the segment."""
        return self.num_chunks * self.length

    def lows(self) -> list[int]:
        """Lower wire of each comparator, in segment order."""
        return [
            self.start + q * self.period + self.lane + j
            for q in range(self.num_chunks)
            for j in range(self.length)
        ]


@dataclass(frozen=True)
class Layer:
    """One layer of disjoint, non-identity comparators.

    Attributes:
        lo: lower wire of every comparator, ascending.
        hi: upper wire of every comparator.
        descending: whether the comparator writes the maximum to ``lo``.
        segments: the same comparators as strided windows, in the same order.
        group_size: wires interact only within aligned groups of this many wires up to and
            including this layer (``n'`` when unrestricted).
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    descending: tuple[bool, ...]
    segments: tuple[Segment, ...]
    group_size: int

    @property
    def size(self) -> int:
        """Number of comparators in the layer."""
        return len(self.lo)


@dataclass(frozen=True)
class NetworkPlan:
    """A sorting network for ``size`` keys on ``num_wires >= size`` wires.

    Input ``i`` enters wire ``pad + i``; rank ``k`` (ascending) leaves wire ``pad + k``.
    """

    network: SortNetwork
    size: int
    num_wires: int
    layers: tuple[Layer, ...]

    @property
    def pad(self) -> int:
        """Number of dropped leading wires ``n' - n``."""
        return self.num_wires - self.size

    def in_width(self, group: int) -> int:
        """Input columns stored per wire in the block layout of wire groups of size ``group``.

        Groups smaller than ``n'`` keep their padded inputs; the last stage keeps the n real
        inputs.
        """
        return self.size if group == self.num_wires else group

    def in_base(self, group: int, index: int) -> int:
        """Padded input index of local input column 0 of group ``index``."""
        return self.pad if group == self.num_wires else index * group


def _bitonic_segments(num_wires: int, pad: int, distance: int) -> tuple[Segment, ...]:
    """Windows covering the comparators ``(i, i + m)`` with ``i >= pad`` of one bitonic layer."""
    period = 2 * distance
    first, lane = divmod(pad, period)
    segments = []
    if lane:
        if lane < distance:  # the chunk holding the first real wire is partly real
            segments.append(Segment(first * period, 1, period, lane, distance - lane, distance))
        first += 1
    if first < num_wires // period:
        segments.append(Segment(first * period, num_wires // period - first, period, 0, distance,
                                distance))
    return tuple(segments)


def _bitonic(n: int) -> NetworkPlan:
    blocks = (n - 1).bit_length()
    wires = 1 << blocks
    pad = wires - n
    layers = []
    for block in range(blocks):
        group = 2 ** (block + 1)
        for layer in range(block + 1):
            m = 2 ** (block - layer)
            lo = [i + j for i in range(0, wires, 2 * m) for j in range(m) if i + j >= pad]
            layers.append(Layer(
                lo=tuple(lo),
                hi=tuple(i + m for i in lo),
                descending=tuple((i // group) % 2 == 1 for i in lo),
                segments=_bitonic_segments(wires, pad, m),
                group_size=group,
            ))
    return NetworkPlan(SortNetwork.BITONIC, n, wires, tuple(layers))


def _odd_even(n: int) -> NetworkPlan:
    layers = []
    for layer in range(n):
        shift = layer % 2
        lo = list(range(shift, n - 1, 2))
        segments = (Segment(shift, len(lo), 2, 0, 1, 1),) if lo else ()
        layers.append(Layer(
            lo=tuple(lo),
            hi=tuple(i + 1 for i in lo),
            descending=(False,) * len(lo),
            segments=segments,
            group_size=n,
        ))
    # Layers without comparators (n = 1) are the identity; dropping them changes nothing.
    return NetworkPlan(SortNetwork.ODD_EVEN, n, n, tuple(x for x in layers if x.lo))


@functools.lru_cache(maxsize=64)
def build_network(network: SortNetwork, size: int) -> NetworkPlan:
    """Build (once per ``(network, size)``, cached) the comparator plan of a sorting network.

    Args:
        network: network type.
        size: number of keys ``n >= 1``.

    Returns:
        The plan; its layers match ``diffsort.networks.{bitonic,odd_even}_network(size)`` with
        identity comparators removed.
    """
    network = SortNetwork(network)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"sorting network size: got {size!r}, expected an int >= 1")
    plan = _bitonic(size) if network is SortNetwork.BITONIC else _odd_even(size)
    for layer in plan.layers:  # segments must enumerate exactly the comparator list
        if [i for s in layer.segments for i in s.lows()] != list(layer.lo):
            raise AssertionError(f"{network.value} n={size}: segments do not match comparators")
    return plan


# Tensor layout used by neco.method.sorting: a wire-major tensor ``t[wire, ...]`` (values
# ``(n', R)``, permutation ``(n', width, R)`` with ``width = plan.in_width(group)``), so that every
# segment becomes two strided views and the layers update in place. The permutation is stored
# block-diagonally: wire ``w`` of group ``g = w // group`` keeps only the input columns of its
# own group, local column ``t`` being padded input ``plan.in_base(group, g) + t``.


@functools.lru_cache(maxsize=256)
def descending_masks(
    network: SortNetwork, size: int, device: torch.device
) -> tuple[Tensor | None, ...]:
    """Per layer a ``(C, 1)`` bool mask of descending comparators on ``device`` (None if none)."""
    return tuple(
        torch.tensor(layer.descending, device=device).unsqueeze(1) if any(layer.descending)
        else None
        for layer in build_network(network, size).layers
    )


def identity_blocks(plan: NetworkPlan, group: int, rows: int, like: Tensor) -> Tensor:
    """Identity permutation ``(n', width, R)`` in the block layout of ``group``."""
    out = like.new_zeros(plan.num_wires, plan.in_width(group), rows)
    wires = list(range(plan.pad, plan.num_wires))
    local = [w - plan.in_base(group, w // group) for w in wires]
    out[torch.tensor(wires, device=out.device), torch.tensor(local, device=out.device)] = 1
    return out


def regroup(plan: NetworkPlan, x: Tensor, old: int, new: int, *, forward: bool) -> Tensor:
    """Move the block-diagonal permutation (or its gradient) between group sizes.

    Forward embeds the ``(n', w_old, R)`` blocks of size ``old`` into zero blocks of size
    ``new``; backward (``forward=False``, x in the ``new`` layout) extracts them again.
    """
    rows, wires = x.shape[-1], plan.num_wires
    out = x.new_zeros(wires, plan.in_width(old if not forward else new), rows)
    big, small = (out, x) if forward else (x, out)
    if new < wires:  # padded inputs on both sides: one copy through a diagonal view
        k = new // old
        diag = torch.diagonal(big.view(wires // new, k, old, k, old, rows), dim1=1, dim2=3)
        blocks = small.view(wires // new, k, old, old, rows).permute(0, 2, 3, 4, 1)
        (diag if forward else blocks).copy_(blocks if forward else diag)
        return out
    src_w, dst_w = plan.in_width(old), plan.in_width(new)
    for g in range(wires // old):  # into the last block: drop the padded input columns
        if (g + 1) * old <= plan.pad:  # only dropped wires: nothing to move
            continue
        shift = plan.in_base(old, g) - plan.pad
        lo, hi = max(0, -shift), min(src_w, dst_w - shift)
        wires_g = slice(g * old, (g + 1) * old)
        if forward:
            out[wires_g, lo + shift:hi + shift] = x[wires_g, lo:hi]
        else:
            out[wires_g, lo:hi] = x[wires_g, lo + shift:hi + shift]
    return out


def wire_views(t: Tensor, seg: Segment) -> tuple[Tensor, Tensor]:
    """Lower- and upper-wire views ``(chunks, length, ...)`` of a wire-major tensor."""
    win = t[seg.start:seg.start + seg.num_chunks * seg.period]
    win = win.view(seg.num_chunks, seg.period, *t.shape[1:])
    a = win[:, seg.lane:seg.lane + seg.length]
    return a, win[:, seg.lane + seg.distance:seg.lane + seg.distance + seg.length]


def comparator_rows(t: Tensor, offset: int, seg: Segment) -> Tensor:
    """Comparator rows of a per-layer ``(C, ...)`` tensor as ``(chunks, length, ...)``."""
    return t[offset:offset + seg.size].view(seg.num_chunks, seg.length, *t.shape[1:])
