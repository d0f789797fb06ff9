"""EMA teacher, cosine schedules, AdamW groups, trainable blocks (method.md §4, §10, §11).

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).
Schedule and decay rule follow DINO (https://github.com/facebookresearch/dino, ``utils.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "DECAY_GROUPS",
    "apply_trainable_blocks",
    "cosine_schedule",
    "ema_update",
    "param_groups",
    "set_weight_decay",
]

DECAY_GROUPS = ("backbone_decay", "head_decay")


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


def _no_decay(name: str, param: torch.Tensor) -> bool:
    """DINO rule: biases and 1-D parameters (norms, LayerScale) get no weight decay."""
    return name.endswith(".bias") or param.ndim <= 1


def param_groups(
    backbone: nn.Module,
    head: nn.Module,
    *,
    weight_decay: float,
    lr_backbone: float,
    lr_head: float,
) -> list[dict[str, Any]]:
    """The 4 AdamW parameter groups of method.md §11, trainable parameters only.

    ===  ===================  =================================================  ============
    idx  name                 members                                            weight decay
    ===  ===================  =================================================  ============
    0    backbone_decay       backbone weights with ndim >= 2 (incl. pos-embed,  weight_decay
                              CLS/register/mask tokens: DINO rule)
    1    backbone_no_decay    backbone biases and 1-D params (norms, LayerScale)  0
    2    head_decay           head weights                                       weight_decay
    3    head_no_decay        head biases                                        0
    ===  ===================  =================================================  ============

    All four groups are always present (possibly empty) so indices are stable. Each dict has
    ``name``, ``params``, ``lr`` and ``weight_decay``; :func:`set_weight_decay` updates the
    decay groups (``DECAY_GROUPS``) per step.

    Args:
        backbone: student backbone.
        head: student projection head.
        weight_decay: initial decay of groups 0 and 2 (official 0.04, then scheduled).
        lr_backbone: base lr of groups 0, 1 (per recipe, e.g. 1e-5).
        lr_head: base lr of groups 2, 3 (official 1e-4).

    Raises:
        ValueError: a parameter is shared between backbone and head.
    """
    backbone_ids = {id(p) for p in backbone.parameters()}
    shared = [n for n, p in head.named_parameters() if id(p) in backbone_ids]
    if shared:
        raise ValueError(f"param_groups: head parameters also in the backbone: {shared[:5]}")
    groups: list[dict[str, Any]] = []
    for prefix, module, lr in (("backbone", backbone, lr_backbone), ("head", head, lr_head)):
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in module.named_parameters():
            if param.requires_grad:
                (no_decay if _no_decay(name, param) else decay).append(param)
        groups.append(
            {"name": f"{prefix}_decay", "params": decay, "lr": lr, "weight_decay": weight_decay}
        )
        groups.append(
            {"name": f"{prefix}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
        )
    return groups


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Write the scheduled weight decay into the decay groups (names in ``DECAY_GROUPS``)."""
    for group in optimizer.param_groups:
        if group.get("name") in DECAY_GROUPS:
            group["weight_decay"] = weight_decay


def apply_trainable_blocks(
    blocks: nn.ModuleList, backbone: nn.Module, spec: int | Sequence[int] | None
) -> list[int]:
    """Set ``requires_grad`` on the backbone per ``train.trainable_blocks`` (method.md §4).

    * ``None`` (official): every backbone parameter is trainable.
    * int ``n < 0``: the last ``|n|`` blocks; int ``n >= 0``: blocks ``n .. depth-1``.
    * list: exactly those block indices (``0 <= i < depth``).

    Project rule (unverified officially): when blocks are selected, non-block parameters (patch
    embed, pos-embed, tokens, final norm) are frozen. The head is not touched here: it is always
    trainable.

    Args:
        blocks: the backbone's transformer blocks (e.g. timm ``model.blocks``).
        backbone: the backbone owning ``blocks``.
        spec: the selection.

    Returns:
        Sorted indices of the trainable blocks.

    Raises:
        ValueError: the selection is out of range, duplicated, or ``blocks`` is not part of
            ``backbone``.
    """
    depth = len(blocks)
    owned = {id(p) for p in backbone.parameters()}
    if any(id(p) not in owned for p in blocks.parameters()):
        raise ValueError("apply_trainable_blocks: `blocks` are not modules of `backbone`")
    key = "train.trainable_blocks"
    if spec is None:
        selected = list(range(depth))
    elif isinstance(spec, bool):
        raise ValueError(f"{key} = {spec!r}: expected null, an int or a list of ints")
    elif isinstance(spec, int):
        if not -depth <= spec < depth:
            raise ValueError(f"{key} = {spec}: expected -{depth} <= n < {depth} for {depth} blocks")
        selected = list(range(depth + spec, depth)) if spec < 0 else list(range(spec, depth))
    else:
        selected = [int(i) for i in spec]
        if len(set(selected)) != len(selected) or any(not 0 <= i < depth for i in selected):
            raise ValueError(f"{key} = {list(spec)}: expected distinct indices in [0, {depth})")
        selected = sorted(selected)
    backbone.requires_grad_(spec is None)
    for i in selected:
        blocks[i].requires_grad_(True)
    return selected
