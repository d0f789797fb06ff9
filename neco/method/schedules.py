"""EMA teacher update and the per-step cosine schedules of lr, weight decay and momentum
(method.md §10, §11).

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).
Schedule and decay rule follow DINO (https://github.com/facebookresearch/dino, ``utils.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["cosine_schedule", "ema_update"]


def cosine_schedule(start: float, end: float, step: int, total_steps: int) -> float:
    """DINO's per-step cosine schedule (method.md §10, §11).

    ``value(t) = end + (start - end) * (1 + cos(pi * t / T)) / 2`` for ``t = 0 .. T-1``, where t
    counts optimizer steps from 0 (DINO's ``cosine_scheduler`` without warm-up: value(0) =
    start; value(T-1) is one step short of end, which is never reached). Used for the EMA
    momentum (0.9995 -> 1) and the weight decay (0.04 -> 0.5).

    Args:
        start: value at t = 0.
        end: limit at t = T.
        step: optimizer step t, ``0 <= t < T``.
        total_steps: T = iters_per_epoch * epochs.

    Raises:
        ValueError: ``T < 1`` or t outside ``[0, T)``.
    """
    if total_steps < 1:
        raise ValueError(f"cosine_schedule: total_steps = {total_steps}; expected >= 1")
    if not 0 <= step < total_steps:
        raise ValueError(f"cosine_schedule: step {step} outside [0, {total_steps})")
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / total_steps))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta_t <- m * theta_t + (1 - m) * theta_s`` over all parameters; buffers copied (§10).

    Includes frozen parameters (identical in both models, so a no-op for them) and the head.
    Parameters are matched by name; m = 1 leaves the teacher bit-identical and m = 0 copies the
    student exactly (for finite teacher values).

    Args:
        teacher: EMA model, updated in place.
        student: source model with the same parameter and buffer names and shapes.
        momentum: m in [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum {momentum} outside [0, 1]")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    for kind, t_named, s_named in (("parameters", t_params, s_params), ("buffers", t_bufs, s_bufs)):
        if t_named.keys() != s_named.keys():
            diff = sorted(set(t_named) ^ set(s_named))
            raise ValueError(f"ema_update: teacher and student {kind} differ: {diff[:10]}")
        for name, t in t_named.items():
            if t.shape != s_named[name].shape:
                raise ValueError(
                    f"ema_update: {kind[:-1]} {name}: teacher {tuple(t.shape)} vs student "
                    f"{tuple(s_named[name].shape)}"
                )
    names = list(t_params)
    if names:
        t_list = [t_params[k].data for k in names]
        s_list = [s_params[k].data.to(t_params[k].dtype) for k in names]
        torch._foreach_mul_(t_list, momentum)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    for name, buf in t_bufs.items():
        buf.copy_(s_bufs[name])
