"""Reference patches of the NeCo loss: FIFO queue banks and in-batch references (method.md §6).

Every query patch of image b in pair (g, v) is ranked against the same n references
``R[b]`` by student and teacher. They come either from a per-assigned-crop FIFO queue of teacher
patch embeddings (``queue: true``, DINOv2-family recipes) or from the pair's own aligned teacher
patches of the current batch (``queue: false``, DINO/TimeT/Leopart recipes).

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).

Randomness: every function takes an explicit CPU ``torch.Generator``; indices are drawn on the
CPU and moved to the data's device, so results do not depend on the accelerator.

Multi-device: the queue is **per device**, as in the official code: each DDP rank holds
``queue_length // world_size`` rows per bank (official: ``// gpus`` of one node; here world =
devices x nodes, §16 #23), pushes its own teacher
patches and samples its own banks with its own reference generator (no gather). The queue is kept
out of DDP's buffer broadcast (see :class:`ReferenceQueue`). Whether the paper runs used more than
one device is unverified (§16 #23).
"""

from __future__ import annotations

import torch

__all__ = ["ReferenceQueue", "inbatch_references", "select_push_tokens"]


class ReferenceQueue:
    """FIFO ring buffers of teacher patch embeddings, one bank per assigned global crop.

    Project D2 (§16 #4): each bank has its **own fill counter** (the official code shares one
    counter across banks and increments it twice per step, so early steps sample zero slots).

    Deliberately **not** an ``nn.Module`` and its tensors are not buffers: DDP broadcasts every
    buffer of the wrapped module from rank 0 before each forward (``broadcast_buffers=True``),
    which would overwrite the other ranks' banks with rank 0's every step. The owner
    (``neco.train.module.NeCoModule``) moves the queue to its device and saves/restores
    :meth:`state_dict` per rank in the Lightning checkpoint, so a resumed run continues the same
    queue on every rank.

    Args:
        num_banks: number of banks (``len(crops_for_assign)``, 2 officially).
        queue_length: slots per bank on this device (official 8192 // number of devices).
        dim: embedding dimension d (official 256).
        device: where the tensors live (default CPU).

    Attributes:
        banks: ``(num_banks, queue_length, dim)`` float32 embeddings (zeros until filled).
        ptr: ``(num_banks,)`` int64 next write slot per bank.
        filled: ``(num_banks,)`` int64 number of valid slots per bank (``<= queue_length``).
    """

    STATE_KEYS = ("banks", "ptr", "filled")

    def __init__(
        self,
        *,
        num_banks: int,
        queue_length: int,
        dim: int,
        device: torch.device | str | None = None,
    ) -> None:
        if num_banks < 1 or queue_length < 1 or dim < 1:
            raise ValueError(
                f"ReferenceQueue: num_banks={num_banks}, queue_length={queue_length} "
                f"(train.loss.queue_length per device), dim={dim}: all must be >= 1"
            )
        self.num_banks, self.queue_length, self.dim = num_banks, queue_length, dim
        self.banks = torch.zeros(num_banks, queue_length, dim, device=device)
        self.ptr = torch.zeros(num_banks, dtype=torch.long, device=device)
        self.filled = torch.zeros(num_banks, dtype=torch.long, device=device)

    def __repr__(self) -> str:
        return (
            f"ReferenceQueue(num_banks={self.num_banks}, queue_length={self.queue_length}, "
            f"dim={self.dim}, filled={self.filled.tolist()}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.banks.device

    def to(self, device: torch.device | str) -> ReferenceQueue:
        """Move the tensors to ``device`` (in place; returns ``self`` like ``nn.Module.to``)."""
        self.banks = self.banks.to(device)
        self.ptr = self.ptr.to(device)
        self.filled = self.filled.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"banks", "ptr", "filled"}`` (detached copies, on the queue's device)."""
        return {k: getattr(self, k).detach().clone() for k in self.STATE_KEYS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` output (strict: same keys, shapes and dtypes).

        Raises:
            KeyError: keys missing or unexpected.
            ValueError: a shape or dtype differs (e.g. another ``queue_length`` per device).
        """
        if set(state) != set(self.STATE_KEYS):
            raise KeyError(
                f"ReferenceQueue.load_state_dict: expected keys {sorted(self.STATE_KEYS)}, "
                f"got {sorted(state)}"
            )
        for key in self.STATE_KEYS:
            mine, theirs = getattr(self, key), state[key]
            if theirs.shape != mine.shape or theirs.dtype != mine.dtype:
                raise ValueError(
                    f"ReferenceQueue.load_state_dict: {key} is {tuple(theirs.shape)} "
                    f"{theirs.dtype}, this queue has {tuple(mine.shape)} {mine.dtype}"
                )
        for key in self.STATE_KEYS:
            getattr(self, key).copy_(state[key])

    def _check_bank(self, bank: int) -> None:
        if not 0 <= bank < self.num_banks:
            raise IndexError(f"ReferenceQueue: bank {bank} out of range [0, {self.num_banks})")

    @torch.no_grad()
    def push(self, bank: int, x: torch.Tensor) -> None:
        """Append rows to a bank, overwriting the oldest once it is full (ring buffer).

        Args:
            bank: bank index (position of the teacher crop in ``crops_for_assign``).
            x: ``(N, d)`` embeddings; stored detached in the bank's dtype. When N exceeds
                ``queue_length`` only the last ``queue_length`` rows are kept (FIFO).
        """
        self._check_bank(bank)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ReferenceQueue.push: expected (N, {self.dim}), got {tuple(x.shape)}")
        length = self.queue_length
        x = x.detach()[-length:].to(self.banks.dtype)
        n = x.shape[0]
        if n == 0:
            return
        start = int(self.ptr[bank])
        slots = (start + torch.arange(n, device=self.banks.device)) % length
        self.banks[bank, slots] = x.to(self.banks.device)
        self.ptr[bank] = (start + n) % length
        self.filled[bank] = min(int(self.filled[bank]) + n, length)

    @torch.no_grad()
    def sample(
        self, bank: int, *, batch_size: int, n: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Draw n references per image from a bank (official rule, restricted to filled slots).

        Takes the first ``B*n`` entries of ``randperm(queue_length)`` and reduces them modulo
        the bank's fill count. Before the bank has wrapped its valid slots are ``0..filled-1``
        (writes start at slot 0), so only pushed rows are returned; once full this is the
        official sampling without replacement.

        Args:
            bank: bank index.
            batch_size: B, images per device.
            n: references per image.
            generator: CPU generator for the permutation.

        Returns:
            ``(B, n, d)`` detached references.

        Raises:
            RuntimeError: the bank is empty.
            ValueError: ``B*n > queue_length`` (also caught by ``validate_loss_config``).
        """
        self._check_bank(bank)
        filled = int(self.filled[bank])
        if filled == 0:
            raise RuntimeError(f"ReferenceQueue.sample: bank {bank} is empty; push before sampling")
        if batch_size * n > self.queue_length:
            raise ValueError(
                f"ReferenceQueue.sample: B*n = {batch_size}*{n} = {batch_size * n} exceeds "
                f"train.loss.queue_length = {self.queue_length}"
            )
        idx = torch.randperm(self.queue_length, generator=generator)[: batch_size * n] % filled
        return self.banks[bank, idx.to(self.banks.device)].reshape(batch_size, n, self.dim)


@torch.no_grad()
def select_push_tokens(
    teacher_map: torch.Tensor, *, per_image: int, queue_length: int, generator: torch.Generator
) -> torch.Tensor:
    """Choose the teacher patch embeddings pushed into a bank this step (method.md §6).

    Draws ``min(per_image * B, queue_length)`` (image, position) pairs uniformly **without
    replacement** from the full, un-aligned ``B x H x W`` teacher grid of one crop (the official
    with/without-replacement choice is unverified; without replacement never pushes a patch
    twice). The count per image therefore varies around ``per_image``.

    Args:
        teacher_map: ``(B, d, H, W)`` teacher head output of one assigned crop (unit-norm rows).
        per_image: ``queue_push_per_image`` (official 10).
        queue_length: bank size (caps the count).
        generator: CPU generator.

    Returns:
        ``(M, d)`` detached rows, ``M = min(per_image * B, queue_length)``.

    Raises:
        ValueError: M exceeds the ``B*H*W`` available patches.
    """
    if teacher_map.ndim != 4:
        raise ValueError(
            f"select_push_tokens: expected (B, d, H, W), got {tuple(teacher_map.shape)}"
        )
    batch, dim, height, width = teacher_map.shape
    count = min(per_image * batch, queue_length)
    pool = batch * height * width
    if count > pool:
        raise ValueError(
            f"train.loss.queue_push_per_image = {per_image}: {count} pushes per step exceed the "
            f"{pool} teacher patches of the batch ({batch} images x {height}x{width} tokens)"
        )
    tokens = teacher_map.detach().flatten(2).transpose(1, 2).reshape(pool, dim)
    idx = torch.randperm(pool, generator=generator)[:count]
    return tokens[idx.to(tokens.device)]


def inbatch_references(f_t: torch.Tensor, *, n: int, generator: torch.Generator) -> torch.Tensor:
    """References from the pair's own aligned teacher patches (no-queue mode, method.md §6).

    The ``B*M`` aligned teacher patches are flattened, tiled to at least ``B*n`` rows, randomly
    permuted, truncated to ``B*n`` and reshaped, so each image gets random aligned patches of
    the batch (possibly its own). The rows keep ``f_t``'s autograd state: teacher features are
    already detached (D2), while in the ``use_teacher: false`` ablation the second student
    forward's references carry gradient, as in the official code.

    Args:
        f_t: ``(B, M, d)`` aligned teacher features of one pair (M = k*k).
        n: references per image.
        generator: CPU generator.

    Returns:
        ``(B, n, d)``.
    """
    if f_t.ndim != 3:
        raise ValueError(f"inbatch_references: expected (B, M, d), got {tuple(f_t.shape)}")
    batch, m, dim = f_t.shape
    rows = f_t.reshape(batch * m, dim)
    reps = -(-batch * n // (batch * m))  # ceil
    tiled = rows.repeat(reps, 1)
    idx = torch.randperm(tiled.shape[0], generator=generator)[: batch * n]
    return tiled[idx.to(tiled.device)].reshape(batch, n, dim)
