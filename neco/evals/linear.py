"""Linear segmentation probe on frozen patch tokens (evaluation.md §2).

A 1×1 conv head over bilinearly upsampled tokens is trained with cross-entropy (ignore ι), SGD and
StepLR; after every epoch the whole val split is scored with identity mapping on one dataset-level
confusion. Both the best-val epoch (reference model selection) and the last epoch are kept.

Feature sources: **train features are always extracted live** from ``extractor``, because the
random crop and flip change every epoch and cannot be cached. Val features are deterministic;
they are taken from ``val_features`` (the pipeline's cached tokens) or extracted once here.

Reference: NeCo ``experiments/linear_segmentation/linear_finetune.py`` (facts only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neco.config.evals import (
    Autocast,
    ImageStd,
    LinearConfig,
    MaskResize,
    Matching,
    ModelSelection,
    TrainShuffle,
    UpsampleOrder,
)
from neco.data.types import SegDataset
from neco.evals.extract import (
    ValMask,
    check_sample,
    chunks,
    extract_val_features,
    iterate_batches,
    load_masks,
    run_extractor,
)
from neco.evals.extractor import FeatureExtractor
from neco.evals.metrics import confusion_matrix, score_confusion
from neco.evals.results import EpochRecord, Example, LinearResult, settings_dict
from neco.evals.transforms import (
    as_tensor,
    check_crop_params,
    derived_generator,
    flip_draw,
    pil_crop_resize,
    pil_resize_image,
    random_resized_crop_params,
    to_normalised,
    torch_resize_mask,
)

Progress = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class LinearTrainItem:
    """Train view of sample ``index`` at ``epoch``: crop + flip from a generator keyed by both."""

    ds: SegDataset
    input_size: int
    mask_size: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip_p: float
    seed: int

    def __call__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        sample = self.ds[index]
        check_sample(sample.image, sample.mask, sample.id)
        g = derived_generator(self.seed, "linear-train", epoch, index)
        height, width = sample.mask.shape
        box = random_resized_crop_params(height, width, self.crop_scale, self.crop_ratio, g)
        image, mask = pil_crop_resize(
            sample.image, sample.mask, box, self.input_size, flip_draw(self.flip_p, g)
        )
        target = torch_resize_mask(as_tensor(mask), self.mask_size, MaskResize.nearest)
        return to_normalised(image, ImageStd.correct), target


def init_head(dim: int, num_classes: int, generator: torch.Generator) -> nn.Conv2d:
    """``Conv2d(D, C, 1)`` with PyTorch's default init (U(±1/√D) for weight and bias) drawn from
    ``generator`` instead of the global RNG."""
    head: nn.Conv2d = nn.utils.skip_init(nn.Conv2d, dim, num_classes, 1)  # type: ignore[no-untyped-call]
    bound = 1.0 / dim**0.5
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        assert head.bias is not None
        head.bias.uniform_(-bound, bound, generator=generator)
    return head


def head_logits(
    head: nn.Module, tokens: torch.Tensor, *, grid: int, size: int, order: UpsampleOrder
) -> torch.Tensor:
    """Logits ``(B, C, size, size)`` of tokens ``(B, s*s, D)`` (bilinear, no corner alignment)."""
    x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid, grid)
    if order is UpsampleOrder.features:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        logits: torch.Tensor = head(x)
        return logits
    logits = head(x)
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def _predict(
    head: nn.Module, feats: torch.Tensor, cfg: LinearConfig, grid: int, device: torch.device
) -> torch.Tensor:
    with torch.no_grad():
        logits = head_logits(
            head, feats.to(device), grid=grid, size=cfg.eval_mask_size, order=cfg.upsample_order
        )
    return logits.argmax(dim=1)


def _val_confusion(
    head: nn.Module,
    val_features: torch.Tensor,
    val_gt: torch.Tensor,
    batches: list[list[int]],
    cfg: LinearConfig,
    *,
    grid: int,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
) -> np.ndarray:
    """int64 ``(C, C)`` identity-mapped val confusion at ``eval_mask_size``."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for b in batches:
        conf += confusion_matrix(
            val_gt[b].to(device),
            _predict(head, val_features[b], cfg, grid, device),
            num_classes=num_classes,
            num_pred=num_classes,
            ignore_index=ignore_index,
        )
    out: np.ndarray = conf.cpu().numpy()
    return out


def fingerprint(cfg: LinearConfig, n_mean: int) -> str:
    """Short settings string (evaluation.md §1.7)."""
    return (
        f"linear[S{cfg.input_size} m{cfg.mask_size}/{cfg.eval_mask_size} ep{cfg.epochs} "
        f"bs{cfg.batch_size} lr{cfg.lr:g} wd{cfg.weight_decay:g} step{cfg.step_size}x{cfg.gamma:g} "
        f"sel={cfg.model_selection.value} order={cfg.train_shuffle.value} "
        f"val={'full' if cfg.full_val else 'drop_last'} up={cfg.upsample_order.value} mean{n_mean}]"
    )


def linear_probe(
    extractor: FeatureExtractor,
    train_ds: SegDataset,
    val_ds: SegDataset,
    cfg: LinearConfig,
    *,
    device: torch.device,
    seed: int,
    figure_examples: int,
    val_features: torch.Tensor | None = None,
    progress: Progress | None = None,
    num_workers: int = 0,
) -> LinearResult:
    """Train and score a linear segmentation head on frozen features (evaluation.md §2.3).

    Args:
        extractor: frozen extractor on ``device``; train tokens always come from it (augmented).
        train_ds: training split (its order is the ``reference`` train order).
        val_ds: val split, also the model-selection split (reference quirk).
        cfg: settings.
        device: where the head trains and the extractor runs.
        seed: drives head init, shuffling, crops and flips (explicit generators only).
        figure_examples: val images kept as figure examples (not serialised).
        val_features: cached float32 ``(N_val, s*s, D)`` tokens of ``val_ds`` at ``input_size``
            (correct std, fp32), dataset order; extracted here when None.
        progress: optional callback receiving one dict per epoch.
        num_workers: data-loader workers (speed only).

    Returns:
        The :class:`LinearResult`.
    """
    check_crop_params("eval.linear", cfg.crop_scale, cfg.crop_ratio)
    start = time.perf_counter()
    num_classes, ignore = val_ds.num_classes, val_ds.ignore_index
    if train_ds.num_classes != num_classes or train_ds.ignore_index != ignore:
        raise ValueError("linear_probe: train and val splits disagree on num_classes/ignore_index")
    if cfg.input_size % extractor.patch_size:
        raise ValueError(
            f"linear.input_size={cfg.input_size} not divisible by patch {extractor.patch_size}"
        )
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(
            f"linear.epochs and linear.batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}"
        )
    grid, dim = cfg.input_size // extractor.patch_size, extractor.embed_dim
    n_val = len(val_ds) if cfg.full_val else (len(val_ds) // cfg.batch_size) * cfg.batch_size
    if n_val == 0 or len(train_ds) == 0:
        raise ValueError(f"linear_probe: empty split (train {len(train_ds)}, scored val {n_val})")
    if val_features is None:
        val_features = extract_val_features(
            extractor,
            val_ds,
            input_size=cfg.input_size,
            image_std=ImageStd.correct,
            batch_size=cfg.batch_size,
            device=device,
            autocast=Autocast.none,
            num_workers=num_workers,
        )
    if tuple(val_features.shape) != (len(val_ds), grid * grid, dim):
        raise ValueError(
            f"val_features shape {tuple(val_features.shape)} != (N_val, s*s, D) = "
            f"{(len(val_ds), grid * grid, dim)} for linear.input_size={cfg.input_size}"
        )
    val_features = val_features[:n_val]
    val_gt = load_masks(
        ValMask(val_ds, cfg.input_size, cfg.eval_mask_size),
        n_val,
        batch_size=cfg.batch_size,
        num_workers=num_workers,
    )

    head = init_head(dim, num_classes, derived_generator(seed, "linear-head")).to(device)
    opt = torch.optim.SGD(
        head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    item = LinearTrainItem(
        train_ds,
        cfg.input_size,
        cfg.mask_size,
        (cfg.crop_scale[0], cfg.crop_scale[1]),
        (cfg.crop_ratio[0], cfg.crop_ratio[1]),
        cfg.flip_p,
        seed,
    )
    val_batches = chunks(range(n_val), cfg.batch_size, drop_last=False)

    curve: list[EpochRecord] = []
    best: tuple[float, int, dict[str, torch.Tensor], np.ndarray] | None = None
    for epoch in range(cfg.epochs):
        if cfg.train_shuffle is TrainShuffle.shuffle:
            order = torch.randperm(
                len(train_ds), generator=derived_generator(seed, "linear-order", epoch)
            ).tolist()
        else:
            order = list(range(len(train_ds)))
        batches = [
            [(epoch, i) for i in b]
            for b in chunks(order, cfg.batch_size, drop_last=cfg.train_drop_last)
        ]
        head.train()
        losses = []
        for images, targets in iterate_batches(item, batches, num_workers=num_workers):
            tokens = run_extractor(extractor, images, autocast=Autocast.none, device=device)
            targets = targets.to(device).long()
            if not bool((targets != ignore).any()):
                continue  # every pixel ignored: CE would be NaN
            logits = head_logits(
                head, tokens, grid=grid, size=cfg.mask_size, order=cfg.upsample_order
            )
            loss = F.cross_entropy(logits, targets, ignore_index=ignore)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        head.eval()
        conf_np = _val_confusion(
            head,
            val_features,
            val_gt,
            val_batches,
            cfg,
            grid=grid,
            num_classes=num_classes,
            ignore_index=ignore,
            device=device,
        )
        miou = score_confusion(
            conf_np,
            matching=Matching.identity,
            ignore_index=ignore,
            mean_over=cfg.metric.ade20k_mean_over,
        ).miou
        if not losses:
            raise ValueError(f"linear_probe: epoch {epoch} had no batch with a labelled pixel")
        record = EpochRecord(epoch, float(np.mean(losses)), miou)
        curve.append(record)
        state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        if best is None or miou > best[0]:
            best = (miou, epoch, state, conf_np)
        last = (miou, epoch, state, conf_np)
        if progress is not None:
            progress({"protocol": "linear", **vars(record)})
    assert best is not None
    chosen = best if cfg.model_selection is ModelSelection.best_val else last
    score = score_confusion(
        chosen[3],
        matching=Matching.identity,
        ignore_index=ignore,
        mean_over=cfg.metric.ade20k_mean_over,
    )

    head.load_state_dict(chosen[2])
    head.eval()
    examples = []
    n_ex = min(figure_examples, n_val)
    if n_ex:
        preds = (
            _predict(head, val_features[:n_ex], cfg, grid, device).cpu().numpy().astype(np.uint8)
        )
        for i in range(n_ex):
            sample = val_ds[i]
            examples.append(
                Example(
                    sample.id,
                    pil_resize_image(sample.image, cfg.input_size),
                    val_gt[i].numpy(),
                    {"pred": preds[i]},
                )
            )
    return LinearResult(
        miou=score.miou,
        miou_best_val=best[0],
        miou_last=last[0],
        best_epoch=best[1],
        iou_per_class=score.iou_per_class,
        variants={Matching.identity.value: score.miou, **score.variants},
        confusion=chosen[3],
        mapping=score.mapping,
        curve=tuple(curve),
        eval_mask_size=cfg.eval_mask_size,
        class_names=tuple(val_ds.class_names),
        settings=settings_dict(cfg),
        fingerprint=fingerprint(cfg, len(score.mean_classes)),
        seed=seed,
        n_images=n_val,
        n_pixels=int(chosen[3].sum()),
        runtime_s=time.perf_counter() - start,
        device=str(device),
        head_best_val=best[2],
        head_last=last[2],
        examples=tuple(examples),
    )
