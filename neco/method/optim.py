"""AdamW parameter groups, the weight-decay update, and trainable blocks (method.md §4, §11).

The decay rule follows DINO (https://github.com/facebookresearch/dino, ``utils.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DECAY_GROUPS = ("backbone_decay", "head_decay")


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
    blocks: nn.ModuleList | nn.Sequential, backbone: nn.Module, spec: int | Sequence[int] | None
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
