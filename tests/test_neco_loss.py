"""Tests for ``neco.method.loss`` and ``neco.method.roi`` (method.md §3, §5-§9, §16 #5, #6).

The loss is compared against a slow, direct implementation of the spec formula built on the
``diffsort`` package (loop over pairs and query rows), in float64, for the loss and the student
gradients; the loss itself runs the project's ``neco.method.sorting.soft_sort``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from neco.config.method import LossConfig, LossImplementation, Similarity, SortDistribution
from neco.method.loss import loss_from_maps, neco_loss, similarities, validate_loss_config
from neco.method.references import ReferenceQueue
from neco.method.roi import align_pairs, pair_order
from neco.method.sorting import SortNetwork

diffsort = pytest.importorskip("diffsort")  # test-only reference (stack.md §4)

torch.set_num_threads(1)


def make_cfg(**over: object) -> LossConfig:
    base = dict(
        roi_k=3,
        n_refs=9,
        similarity=Similarity.COSINE,
        sort_network=SortNetwork.BITONIC,
        sort_distribution=SortDistribution.CAUCHY,
        art_lambda=0.25,
        steepness_student=100.0,
        steepness_teacher=None,
        log_eps=0.0,
        queue=False,
        queue_length=64,
        queue_push_per_image=10,
        crops_for_assign=[0, 1],
        use_teacher=True,
        implementation=LossImplementation.EXACT,
    )
    base.update(over)
    return LossConfig(**base)  # type: ignore[arg-type]


def reference_loss(
    f_s: torch.Tensor, f_t: torch.Tensor, refs: torch.Tensor, cfg: LossConfig
) -> torch.Tensor:
    """Direct spec formula (§7, §9), one diffsort call per query row."""
    n = refs.shape[2]
    beta_t = cfg.steepness_teacher or cfg.steepness_student

    def net(beta: float) -> diffsort.DiffSortNet:
        return diffsort.DiffSortNet(
            cfg.sort_network.value,
            n,
            steepness=beta,
            art_lambda=cfg.art_lambda,
            distribution=cfg.sort_distribution.value,
        )

    sorter_s, sorter_t = net(cfg.steepness_student), net(beta_t)

    def sim(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # f (d,), r (n, d) -> (1, n)
        if cfg.similarity is Similarity.COSINE:
            return ((r @ f) / (r.norm(dim=1) * f.norm())).unsqueeze(0)
        return ((r - f).pow(2).sum(1).sqrt()).unsqueeze(0)

    pair_losses = []
    for p in range(f_s.shape[0]):
        total = f_s.new_zeros(())
        for b in range(f_s.shape[1]):
            for q in range(f_s.shape[2]):
                _, perm_s = sorter_s(sim(f_s[p, b, q], refs[p, b]))
                with torch.no_grad():
                    _, perm_t = sorter_t(sim(f_t[p, b, q], refs[p, b]))
                logp = perm_s.clamp_min(cfg.log_eps).log() if cfg.log_eps > 0 else perm_s.log()
                total = total - (perm_t * logp).sum()
        pair_losses.append(total / (f_s.shape[1] * f_s.shape[2] * n))
    return torch.stack(pair_losses).mean()


def random_inputs(
    pairs: int, b: int, m: int, n: int, d: int, seed: int
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f_t = torch.randn(pairs, b, m, d, generator=g, dtype=torch.float64)
    f_s = (
        f_t + 0.5 * torch.randn(pairs, b, m, d, generator=g, dtype=torch.float64)
    ).requires_grad_()
    refs = torch.randn(pairs, b, n, d, generator=g, dtype=torch.float64)
    return f_s, f_t, refs


@pytest.mark.parametrize(
    ("pairs", "k", "n", "over"),
    [
        (2, 3, 9, {}),
        (3, 3, 13, {"sort_network": SortNetwork.ODD_EVEN, "steepness_teacher": 1000.0}),
        (2, 3, 12, {"sort_distribution": SortDistribution.LOGISTIC_PHI, "steepness_student": 10.0}),
        (2, 3, 10, {"similarity": Similarity.EUCLIDEAN, "steepness_student": 10.0}),
        (2, 3, 9, {"log_eps": 1e-3, "steepness_student": 1000.0}),
        (1, 7, 49, {}),
    ],
)
def test_loss_matches_direct_diffsort_reference(pairs: int, k: int, n: int, over: dict) -> None:
    cfg = make_cfg(roi_k=k, n_refs=n, **over)
    f_s, f_t, refs = random_inputs(pairs, 2, k * k, n, 5, seed=n + pairs)
    loss, stats = neco_loss(f_s, f_t, refs, cfg)
    (grad,) = torch.autograd.grad(loss, f_s)
    f_s_ref = f_s.detach().clone().requires_grad_()
    ref = reference_loss(f_s_ref, f_t, refs, cfg)
    (grad_ref,) = torch.autograd.grad(ref, f_s_ref)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref.item()) <= 1e-10 * max(1.0, abs(ref.item()))
    assert (grad - grad_ref).abs().max().item() <= 1e-10 * grad_ref.abs().max().item() + 1e-14
    assert stats["pair_loss"].shape == (pairs,)
    assert torch.allclose(stats["pair_loss"].mean(), loss.detach())


def test_loss_is_minimal_when_student_equals_teacher() -> None:
    """CE(Q, P) >= H(Q) per row, with equality (and zero gradient) at P = Q."""
    cfg = make_cfg(n_refs=16)
    _, f_t, refs = random_inputs(2, 2, 9, 16, 6, seed=3)
    at_teacher = f_t.clone().requires_grad_()
    loss0, stats = neco_loss(at_teacher, f_t, refs, cfg)
    (grad0,) = torch.autograd.grad(loss0, at_teacher)
    assert abs(loss0.item() - stats["teacher_entropy"].item()) < 1e-12
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(f_t.shape, generator=g, dtype=torch.float64)
    moved = [
        neco_loss(f_t + eps * direction, f_t, refs, cfg)[0].item() for eps in (1e-2, 1e-1, 1.0)
    ]
    assert all(v > loss0.item() + 1e-9 for v in moved)
    assert moved[0] < moved[1] < moved[2]
    # Stationary point: the gradient is ~0 compared with the gradient one step away.
    away = (f_t + 0.1 * direction).requires_grad_()
    (grad_away,) = torch.autograd.grad(neco_loss(away, f_t, refs, cfg)[0], away)
    assert grad0.abs().max() < 1e-8 * grad_away.abs().max()


def test_loss_decreases_under_sgd() -> None:
    cfg = make_cfg(n_refs=9)
    f_s, f_t, refs = random_inputs(2, 2, 9, 9, 4, seed=5)
    f_s = f_s.detach().float().requires_grad_()
    opt = torch.optim.SGD([f_s], lr=2.0)
    losses = []
    for _ in range(8):
        loss, _ = neco_loss(f_s, f_t.float(), refs.float(), cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_log_eps_clamps_and_non_finite_raises() -> None:
    f_s, f_t, refs = random_inputs(1, 2, 9, 9, 4, seed=7)
    # Logistic at a huge steepness: P entries underflow to exactly 0.
    steep = make_cfg(sort_distribution=SortDistribution.LOGISTIC, steepness_student=1e5)
    with pytest.raises(FloatingPointError, match="log_eps"):
        neco_loss(f_s, f_t, refs, steep)
    loss, stats = neco_loss(f_s, f_t, refs, replace(steep, log_eps=1e-12))
    assert torch.isfinite(loss) and stats["p_min"].item() == 0.0
    # A clamp (not P + eps): values above eps are unchanged, so Cauchy at beta 100 is identical.
    plain = neco_loss(f_s, f_t, refs, make_cfg())[0]
    assert neco_loss(f_s, f_t, refs, make_cfg(log_eps=1e-12))[0].item() == plain.item()
    with pytest.raises(FloatingPointError):
        neco_loss(f_s.detach() * float("nan"), f_t, refs, make_cfg())


def test_similarities_fp32_under_autocast_and_values() -> None:
    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(2, 5, 8, generator=g), torch.randn(2, 7, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = similarities(f.bfloat16(), r, Similarity.COSINE)
    assert s.dtype == torch.float32 and s.shape == (2, 5, 7)
    cos = F.cosine_similarity(f.unsqueeze(2), r.unsqueeze(1), dim=-1)
    assert torch.allclose(similarities(f, r, Similarity.COSINE), cos, atol=1e-6)
    dist = (f.unsqueeze(2) - r.unsqueeze(1)).norm(dim=-1)
    assert torch.allclose(similarities(f * 3, r * 3, Similarity.EUCLIDEAN), dist * 3, atol=1e-5)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        similarities(f, r, Similarity.COSINE)
        assert torch.get_float32_matmul_precision() == "high"  # restored after the block
    finally:
        torch.set_float32_matmul_precision(previous)


def test_config_validation_names_keys() -> None:
    validate_loss_config(make_cfg(queue=True, n_refs=49, queue_length=8192), batch_size=64)
    with pytest.raises(ValueError) as info:
        validate_loss_config(make_cfg(queue=True, n_refs=49, queue_length=8192), batch_size=168)
    for key in ("train.loss.n_refs", "train.batch_size", "train.loss.queue_length"):
        assert key in str(info.value)
    # In-batch mode tiles references, so the same sizes are fine.
    validate_loss_config(make_cfg(queue=False, n_refs=49, queue_length=8192), batch_size=168)
    for bad in (
        {"n_refs": 1},
        {"roi_k": 0},
        {"steepness_student": 0.0},
        {"log_eps": 1.0},
        {"steepness_teacher": -1.0},
        {"crops_for_assign": [0, 0]},
    ):
        with pytest.raises(ValueError, match="train.loss."):
            validate_loss_config(make_cfg(**bad), batch_size=2)


# ---------------------------------------------------------------------------------------------
# ROI-Align of pairs on a position-encoding image (§3, §5).

PATCH = 8
SIZES = [64, 64, 32, 32, 32, 32]  # 2 global crops (8x8 tokens), 4 local crops (4x4 tokens)
RECTS = [  # (x, y, w, h) in image pixels; non-square, so the axes scale independently
    (10, 5, 120, 100),
    (30, 15, 110, 95),
    (40, 20, 40, 30),
    (100, 60, 35, 45),
    (20, 70, 50, 40),
    (115, 10, 40, 40),
]


def overlap_box(g: int, v: int, frame: int) -> list[float]:
    """Intersection of crops g and v in crop ``frame``'s token units (§3 formulas)."""
    (xg, yg, wg, hg), (xv, yv, wv, hv) = RECTS[g], RECTS[v]
    x1, x2 = max(xg, xv), min(xg + wg, xv + wv)
    y1, y2 = max(yg, yv), min(yg + hg, yv + hv)
    xc, yc, wc, hc = RECTS[frame]
    s = SIZES[frame] / PATCH
    return [(x1 - xc) * s / wc, (y1 - yc) * s / hc, (x2 - xc) * s / wc, (y2 - yc) * s / hc]


def position_maps() -> list[torch.Tensor]:
    """Each crop's token map whose 2 channels are the image (x, y) of the token content."""
    height, width = 130, 170
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    field = torch.stack([xs, ys]).double().unsqueeze(0)  # (1, 2, H, W), pixel centres
    maps = []
    for (x, y, w, h), s in zip(RECTS, SIZES, strict=True):
        crop = F.interpolate(
            field[..., y : y + h, x : x + w], size=(s, s), mode="bilinear", align_corners=False
        )
        maps.append(F.avg_pool2d(crop, PATCH).repeat(2, 1, 1, 1))  # B = 2 identical images
    return maps


@pytest.mark.parametrize("cfa", [[0, 1], [1]])
def test_align_pairs_matches_image_positions(cfa: list[int]) -> None:
    maps, k = position_maps(), 3
    boxes_t = torch.tensor([[overlap_box(g, v, g) for v in range(6)] for g in cfa]).double()
    boxes_s = torch.tensor([[overlap_box(g, v, v) for g in cfa] for v in range(6)]).double()
    f_s, f_t = align_pairs(
        student_maps=maps,
        teacher_maps=[maps[g] for g in cfa],
        boxes_teacher=boxes_t.expand(2, -1, -1, -1),
        boxes_student=boxes_s.expand(2, -1, -1, -1),
        crops_for_assign=cfa,
        roi_k=k,
    )
    pairs = pair_order(cfa, 6)
    assert f_s.shape == f_t.shape == (len(pairs), 2, k * k, 2)
    for i, (g, v) in enumerate(pairs):
        token_px = max(RECTS[c][2 + a] / SIZES[c] * PATCH for c in (g, v) for a in (0, 1))
        (xg, yg, wg, hg), (xv, yv, wv, hv) = RECTS[g], RECTS[v]
        x1, x2, y1, y2 = max(xg, xv), min(xg + wg, xv + wv), max(yg, yv), min(yg + hg, yv + hv)
        centres = torch.arange(k, dtype=torch.float64) + 0.5
        ey, ex = torch.meshgrid(
            y1 + centres * (y2 - y1) / k, x1 + centres * (x2 - x1) / k, indexing="ij"
        )
        expected = torch.stack([ex.flatten(), ey.flatten()], dim=-1)  # row-major bins (y, x)
        for f in (f_s[i], f_t[i]):
            err = (f - expected).abs()
            assert err.max() < 0.5 * token_px, (g, v, err.max())  # bilinear clamp at borders
            assert err.mean() < 0.15 * token_px, (g, v, err.mean())  # exact in the interior
        assert (f_s[i] - f_t[i]).abs().max() < token_px
        assert (f_s[i] - f_t[i]).abs().mean() < 0.2 * token_px


def test_pair_order_and_shape_errors() -> None:
    assert pair_order([0, 1], 6) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (0, 5),
        (1, 0),
        (1, 2),
        (1, 3),
        (1, 4),
        (1, 5),
    ]
    with pytest.raises(ValueError, match="crops_for_assign"):
        pair_order([0, 6], 6)
    maps = [torch.zeros(2, 4, 8, 8)] * 2 + [torch.zeros(2, 4, 4, 4)] * 4
    with pytest.raises(ValueError, match="boxes_teacher"):
        align_pairs(
            student_maps=maps,
            teacher_maps=maps[:2],
            boxes_teacher=torch.zeros(2, 2, 5, 4),
            boxes_student=torch.zeros(2, 6, 2, 4),
            crops_for_assign=[0, 1],
            roi_k=3,
        )


# ---------------------------------------------------------------------------------------------
# Wrapper: maps + boxes + reference source -> loss.


def wrapper_inputs(
    seed: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, batch = 8, 3
    student = [
        F.normalize(
            torch.randn(batch, d, s // PATCH, s // PATCH, generator=g), dim=1
        ).requires_grad_()
        for s in SIZES
    ]
    teacher = [F.normalize(torch.randn(batch, d, 8, 8, generator=g), dim=1) for _ in range(2)]
    boxes_t = torch.tensor([[overlap_box(gc, v, gc) for v in range(6)] for gc in (0, 1)])
    boxes_s = torch.tensor([[overlap_box(gc, v, v) for gc in (0, 1)] for v in range(6)])
    return student, teacher, boxes_t.expand(batch, -1, -1, -1), boxes_s.expand(batch, -1, -1, -1)


@pytest.mark.parametrize("use_queue", [False, True])
def test_loss_from_maps_runs_and_backpropagates(use_queue: bool) -> None:
    student, teacher, boxes_t, boxes_s = wrapper_inputs(0)
    cfg = make_cfg(queue=use_queue, queue_length=64, queue_push_per_image=10, n_refs=9)
    validate_loss_config(cfg, batch_size=3)
    queue = ReferenceQueue(num_banks=2, queue_length=64, dim=8) if use_queue else None
    loss, stats = loss_from_maps(
        student_maps=student,
        teacher_maps=teacher,
        boxes_teacher=boxes_t,
        boxes_student=boxes_s,
        cfg=cfg,
        queue=queue,
        generator=torch.Generator().manual_seed(1),
    )
    loss.backward()
    assert torch.isfinite(loss) and stats["pair_loss"].shape == (10,)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    if queue is not None:
        assert queue.filled.tolist() == [30, 30]  # min(10 * B, 64) per bank, one counter each
    with pytest.raises(ValueError, match="train.loss.queue"):
        loss_from_maps(
            student_maps=student,
            teacher_maps=teacher,
            boxes_teacher=boxes_t,
            boxes_student=boxes_s,
            cfg=cfg,
            queue=None if use_queue else ReferenceQueue(num_banks=2, queue_length=64, dim=8),
            generator=torch.Generator(),
        )


def test_no_teacher_targets_come_from_the_given_target_features() -> None:
    """use_teacher=False: Q is sorted (without grad) from the second-forward target features,
    not from sg(P), so the gradient does not vanish (it did when Q was the detached student)."""
    f_s, f_t, refs = random_inputs(2, 2, 9, 9, 4, seed=11)
    cfg = make_cfg(use_teacher=False)
    loss, stats = neco_loss(f_s, f_t, refs, cfg)
    (grad,) = torch.autograd.grad(loss, f_s)
    assert grad.abs().max() > 1e-6
    assert loss.item() > stats["teacher_entropy"].item() + 1e-6  # P != Q: above the bound
    same, _ = neco_loss(f_s, f_t, refs, make_cfg(use_teacher=True))
    assert same.item() == loss.item()  # the flag only changes where f_t comes from


def test_no_teacher_in_batch_references_keep_their_gradient() -> None:
    """Official ablation: the target forward is not under no_grad, so in-batch references
    (cut from it) carry gradient into the student sort; queue pushes stay detached."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    cfg = make_cfg(use_teacher=False, queue=False)
    maps_s = [torch.randn(2, 8, 4, 4, generator=g, requires_grad=True) for _ in range(4)]
    maps_t = [torch.randn(2, 8, 4, 4, generator=g, requires_grad=True) for _ in range(2)]
    boxes_t = torch.tensor([0.0, 0.0, 4.0, 4.0]).expand(2, 2, 4, 4).clone()
    boxes_s = torch.tensor([0.0, 0.0, 4.0, 4.0]).expand(2, 4, 2, 4).clone()
    loss, _ = loss_from_maps(student_maps=maps_s, teacher_maps=maps_t, boxes_teacher=boxes_t,
                             boxes_student=boxes_s, cfg=replace(cfg, roi_k=2, n_refs=4),
                             queue=None, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(loss, maps_t + maps_s)
    assert max(float(x.abs().max()) for x in grads[:2]) > 0  # through the references
    assert max(float(x.abs().max()) for x in grads[2:]) > 0
    with_teacher, _ = loss_from_maps(
        student_maps=maps_s, teacher_maps=maps_t, boxes_teacher=boxes_t, boxes_student=boxes_s,
        cfg=replace(cfg, roi_k=2, n_refs=4, use_teacher=True), queue=None,
        generator=torch.Generator().manual_seed(0))
    assert with_teacher.item() == pytest.approx(loss.item())
    (t_grad,) = torch.autograd.grad(with_teacher, maps_t[0], allow_unused=True)
    assert t_grad is None  # with a teacher nothing flows into the teacher maps