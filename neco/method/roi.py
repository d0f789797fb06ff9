"""ROI-Align of the (teacher crop, student crop) pairs of the NeCo loss (method.md §5).

For every assigned global crop ``g`` (``crops_for_assign``) and every other crop ``v`` the
teacher map of ``g`` and the student map of ``v`` are ROI-aligned on the overlap of the two
crops, so that ``F_t[p, b, i]`` and ``F_s[p, b, i]`` describe the same image location.

Paper: https://arxiv.org/abs/2408.11054 (official code: https://github.com/vpariza/NeCo).

Pair order (used by every ``(pairs, ...)`` tensor in the loss)::

    for a, g in enumerate(crops_for_assign):   # teacher crop, in crops_for_assign order
        for v in range(num_crops):             # student crop, ascending
            if v != g: pair (g, v)

With the official ``crops_for_assign = [0, 1]`` and 6 crops that is (0,1), (0,2), ..., (0,5),
(1,0), (1,2), ..., (1,5): 10 pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import roi_align

__all__ = ["align_pairs", "pair_order"]


def pair_order(crops_for_assign: Sequence[int], num_crops: int) -> list[tuple[int, int]]:
    """The (teacher crop g, student crop v) pairs of the loss, in the documented order.

    Args:
        crops_for_assign: teacher (global) crop indices, e.g. ``[0, 1]``.
        num_crops: number of crops C seen by the student (6 officially).

    Returns:
        ``len(crops_for_assign) * (num_crops - 1)`` tuples ``(g, v)``.
    """
    if len(crops_for_assign) == 0:
        raise ValueError("train.loss.crops_for_assign: expected at least one crop index, got []")
    if len(set(crops_for_assign)) != len(crops_for_assign):
        raise ValueError(
            f"train.loss.crops_for_assign: duplicate indices in {list(crops_for_assign)}"
        )
    for g in crops_for_assign:
        if not 0 <= g < num_crops:
            raise ValueError(
                f"train.loss.crops_for_assign: index {g} out of range for {num_crops} crops"
            )
    return [(g, v) for g in crops_for_assign for v in range(num_crops) if v != g]


def _pool(
    maps: Sequence[torch.Tensor], which: list[int], boxes: torch.Tensor, k: int
) -> torch.Tensor:
    """ROI-Align box ``j`` on map ``which[j]``.

    Args:
        maps: M distinct maps, each ``(B, d, h, w)`` with the same shape; concatenated once
            (never repeated per pair).
        which: for each of the K boxes, the index of its map in ``maps``.
        boxes: ``(K, B, 4)`` token-unit boxes, one per (pair, image).
        k: output side.

    Returns:
        ``(K, B, k*k, d)``, float32 when the maps are half precision, else the maps' dtype.
    """
    batch, dim = maps[0].shape[:2]
    stacked = torch.cat(list(maps), dim=0)  # (M*B, d, h, w), image b of map m at m*B + b
    if stacked.dtype in (torch.float16, torch.bfloat16):
        stacked = stacked.float()  # boxes in half precision would be off by ~0.1 token
    image = torch.arange(batch, device=stacked.device)
    index = torch.cat([m * batch + image for m in which]).to(stacked.dtype).unsqueeze(1)
    coords = boxes.reshape(-1, 4).to(device=stacked.device, dtype=stacked.dtype)
    rois = torch.cat([index, coords], dim=1)  # (K*B, 5)
    out: torch.Tensor = roi_align(
        stacked, rois, output_size=k, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )  # (K*B, d, k, k)
    return out.reshape(len(which), batch, dim, k * k).transpose(2, 3)


def align_pairs(
    *,
    student_maps: Sequence[torch.Tensor],
    teacher_maps: Sequence[torch.Tensor],
    boxes_teacher: torch.Tensor,
    boxes_student: torch.Tensor,
    crops_for_assign: Sequence[int],
    roi_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROI-Align student and teacher maps on every pair's crop overlap (method.md §5).

    Uses ``torchvision.ops.roi_align(output_size=roi_k, spatial_scale=1, sampling_ratio=-1,
    aligned=True)``, as the official code. Boxes are float (no rounding) and in token units:
    ``[0, 0, s/p, s/p]`` spans a whole ``s``-pixel crop. Crops of equal map size share one
    roi_align call (at most two calls for the student: global and local size; one for the
    teacher).

    Args:
        student_maps: one map per crop c = 0..C-1, each ``(B, d, h_c, w_c)``.
        teacher_maps: one map per assigned crop, in ``crops_for_assign`` order, each
            ``(B, d, G, G)`` (all the same size).
        boxes_teacher: ``(B, A, C, 4)`` ``(x1, y1, x2, y2)``: the intersection of crop
            ``g = crops_for_assign[a]`` with crop ``v`` in crop g's token frame (spec ``gc / p``,
            selected at ``crops_for_assign`` along its second axis).
        boxes_student: ``(B, C, A, 4)``: the same intersection in crop v's token frame (spec
            ``all / p``, selected likewise along its third axis).
        crops_for_assign: teacher crop indices g (the A axis follows this order).
        roi_k: ROI-Align output side k (official 7).

    Returns:
        ``(F_s, F_t)``, each ``(pairs, B, k*k, d)`` in the pair order of :func:`pair_order`;
        the k*k axis is row-major over the ``k x k`` ROI grid (y outer, x inner). ``F_t``
        carries the teacher maps' autograd graph (none when they were made under no_grad).
    """
    num_crops, num_assigned = len(student_maps), len(teacher_maps)
    pairs = pair_order(crops_for_assign, num_crops)
    if num_assigned != len(crops_for_assign):
        raise ValueError(
            f"align_pairs: got {num_assigned} teacher maps for crops_for_assign="
            f"{list(crops_for_assign)}; expected one per assigned crop"
        )
    batch = student_maps[0].shape[0]
    if boxes_teacher.shape != (batch, num_assigned, num_crops, 4):
        raise ValueError(
            f"align_pairs: boxes_teacher has shape {tuple(boxes_teacher.shape)}; expected "
            f"(B, A, C, 4) = {(batch, num_assigned, num_crops, 4)}"
        )
    if boxes_student.shape != (batch, num_crops, num_assigned, 4):
        raise ValueError(
            f"align_pairs: boxes_student has shape {tuple(boxes_student.shape)}; expected "
            f"(B, C, A, 4) = {(batch, num_crops, num_assigned, 4)}"
        )
    if roi_k < 1:
        raise ValueError(f"train.loss.roi_k: expected an integer >= 1, got {roi_k}")
    for c, m in enumerate(student_maps):
        if m.ndim != 4 or m.shape[0] != batch:
            raise ValueError(
                f"align_pairs: student map {c} has shape {tuple(m.shape)}; expected (B, d, h, w)"
            )
    teacher_shapes = [tuple(m.shape) for m in teacher_maps]
    if len(set(teacher_shapes)) != 1:
        raise ValueError(f"align_pairs: teacher maps must share one shape, got {teacher_shapes}")
    slot = {pair: i for i, pair in enumerate(pairs)}
    assigned = {g: a for a, g in enumerate(crops_for_assign)}

    # Teacher: one call over all pairs; pair (g, v) reads teacher_maps[a(g)].
    t_boxes = torch.stack([boxes_teacher[:, assigned[g], v] for g, v in pairs])
    f_t = _pool(list(teacher_maps), [assigned[g] for g, _ in pairs], t_boxes, roi_k)

    # Student: one call per distinct map shape; pair (g, v) reads student_maps[v].
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for v, m in enumerate(student_maps):
        by_shape.setdefault(tuple(m.shape[1:]), []).append(v)
    parts: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for crops in by_shape.values():
        group = [(g, v) for g, v in pairs if v in crops]
        s_boxes = torch.stack([boxes_student[:, v, assigned[g]] for g, v in group])
        pooled = _pool(
            [student_maps[v] for v in crops], [crops.index(v) for _, v in group], s_boxes, roi_k
        )
        for i, pair in enumerate(group):
            parts[slot[pair]] = pooled[i]
    return torch.stack(parts), f_t
