"""Does the NeCo loss do its job on what it trains, and does that reach the backbone?

The issue-14 study measures the cross-view neighbour consistency c on *backbone* tokens (what
the protocols read) and finds it falls under NeCo. The loss, however, acts on the *projection
head's* output. This check measures c, and which patches end up as neighbours, on both, for one
finished demo run (the pipeline's own outputs, nothing retrained):

* backbone: init vs NeCo student backbone;
* head: the student head at step 0 (rebuilt exactly as the training module seeds it) on the
  init backbone vs the trained student head on the NeCo backbone, and the EMA teacher's.

If head c rises while backbone c falls, the loss is optimised (the implementation does what it
should) and the head absorbs it; the backbone is not pulled along within the run.

    python -m bench.head_check --run <repo after `dvc repro`> --out bench/results/head_check_demo

Writes ``<out>.md`` and ``<out>.json``. Same diagnostic settings as the study
(``bench.demo_study.DIAG``: top-10 of 500 train references, 4 x 4 aligned pairs per val image).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.demo_study import DIAG, _images, _patch_features

Features = Callable[[torch.Tensor], torch.Tensor]


class _Tokens:
    """``(B, 3, S, S) -> (B, N, D)``: backbone patch tokens, optionally through a head (then
    L2-normalised, as the loss sees them); ``patch_size`` for the label pooling."""

    def __init__(self, backbone: Any, head: torch.nn.Module | None = None) -> None:
        self.backbone, self.head = backbone, head
        self.patch_size = int(backbone.patch_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tokens: torch.Tensor = self.backbone(x)
            return tokens if self.head is None else F.normalize(self.head(tokens), dim=-1)


def heldout_loss(student: tuple[Any, torch.nn.Module], teacher: tuple[Any, torch.nn.Module],
                 images: list[Any], *, loss_cfg: Any, crops: Any, photometric: Any,
                 seed: int = 0, batch: int = 16) -> dict[str, float]:
    """The NeCo loss itself on images the run never trained on: the training crop geometry (2
    globals + locals), augmentation and loss settings, with in-batch references (no queue: a
    deterministic draw); student/teacher in eval mode. Also H(Q), the loss's lower bound."""
    import dataclasses

    import numpy as np

    from neco.method.augment import make_views
    from neco.method.crops import crop_rng, overlap_boxes, sample_views
    from neco.method.loss import loss_from_maps
    from neco.method.roi import pair_order

    cfg = dataclasses.replace(loss_cfg, queue=False)
    sizes = np.array([crops.global_size] * crops.num_global + [crops.local_size] * crops.num_local)
    gen = torch.Generator().manual_seed(seed)
    losses, entropies, gg, gl = [], [], [], []

    def maps(net: tuple[Any, torch.nn.Module], views: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for v in views:
            with torch.no_grad():
                tok = F.normalize(net[1](net[0](v)), dim=-1).float()
            g = v.shape[-1] // 16
            out.append(tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[2], g, g))
        return out

    for start in range(0, len(images) - batch + 1, batch):
        views_b, gcs, alls = [], [], []
        for i in range(start, start + batch):
            img = images[i]
            rects = sample_views(crop_rng(seed, 0, i), width=img.width, height=img.height,
                                 cfg=crops, image_id=str(i), epoch=0)  # fmt: skip
            views_b.append(make_views(img, rects, sizes, params=photometric, seed=seed, epoch=0,
                                      index=i))  # fmt: skip
            gc, all_ = overlap_boxes(rects, sizes, crops.num_global)
            gcs.append(gc)
            alls.append(all_)
        views = [torch.stack([v[c] for v in views_b]) for c in range(len(sizes))]
        cfa = list(cfg.crops_for_assign)
        gc_t = torch.from_numpy(np.stack(gcs)).float() / 16
        all_t = torch.from_numpy(np.stack(alls)).float() / 16
        loss, stats = loss_from_maps(
            student_maps=maps(student, views), teacher_maps=maps(teacher, [views[g] for g in cfa]),
            boxes_teacher=gc_t[:, cfa], boxes_student=all_t[:, :, cfa], cfg=cfg, queue=None,
            generator=gen,
        )  # fmt: skip
        losses.append(float(loss))
        entropies.append(float(stats["teacher_entropy"].mean()))
        pair = stats["pair_loss"]
        is_gg = torch.tensor([v < crops.num_global for _, v in pair_order(cfa, len(sizes))])
        gg.append(float(pair[is_gg].mean()))
        gl.append(float(pair[~is_gg].mean()))
    return {"loss": float(np.mean(losses)), "teacher_entropy": float(np.mean(entropies)),
            "gap": float(np.mean(losses) - np.mean(entropies)),
            "loss_global_global": float(np.mean(gg)), "loss_global_local": float(np.mean(gl))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="repository after dvc repro")
    parser.add_argument("--out", type=Path, required=True, help="output stem (.md, .json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from neco.config import load_value
    from neco.config.method import CropConfig
    from neco.data.registry import get_dataset, open_dataset
    from neco.method.augment import PhotometricParams
    from neco.method.heads import ProjectionHead
    from neco.models.export import load_exported
    from neco.models.recipes import load_training
    from neco.pretrain.diagnostics import (
        cross_view_consistency,
        neighbour_label_agreement,
        reference_tokens,
    )

    run, params = args.run, args.run / "params.yaml"
    train, crops, _ = load_training(params)
    seed = load_value(params, "seed", int)
    size = load_value(params, "eval.features.input_size", int)
    train_split, val_split = get_dataset("synthetic").eval_splits
    prepared = run / "data" / "prepared" / "synthetic"
    train_ds, val_ds = (open_dataset("synthetic", prepared, s) for s in (train_split, val_split))
    ckpt = torch.load(run / "models" / "checkpoints" / "final.ckpt", map_location="cpu",
                      weights_only=False)
    state = ckpt["state_dict"]

    def head(prefix: str | None) -> ProjectionHead:
        h = train.head
        gen = torch.Generator().manual_seed(seed)  # as NeCoModule: the student head is first
        out = ProjectionHead(192, h.hidden_dim, h.out_dim, h.n_layers, generator=gen)
        if prefix is not None:
            out.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})  # fmt: skip
        return out.eval()

    def backbone(path: Path) -> Any:
        return load_exported(path, train.backbone, pos_embed_interp="official").eval()

    init_bb = backbone(run / "models" / "init" / "init_backbone.safetensors")
    neco_bb = backbone(run / "models" / "neco" / "student_backbone.safetensors")
    teacher_bb = backbone(run / "models" / "neco" / "teacher_backbone.safetensors")
    models: dict[str, Features] = {
        "backbone · init": _Tokens(init_bb),
        "backbone · NeCo student": _Tokens(neco_bb),
        "head · init (step 0)": _Tokens(init_bb, head(None)),
        "head · NeCo student": _Tokens(neco_bb, head("student.head.")),
        "head · NeCo teacher (EMA)": _Tokens(teacher_bb, head("teacher.head.")),
    }
    from neco.train.module import effective_loss_config

    resolved = json.loads((run / "models" / "neco" / "resolved_config.json").read_text())
    loss_cfg = effective_loss_config(train.loss, resolved["values"])
    photometric = PhotometricParams(train.jitter_strength, train.blur_strength)
    h0 = head(None)
    pairs = {
        "init (step 0: student = teacher)": ((init_bb, h0), (init_bb, h0)),
        "NeCo (student vs EMA teacher)": ((neco_bb, head("student.head.")),
                                          (teacher_bb, head("teacher.head."))),
    }
    held: dict[str, Any] = {}
    for split, ds in (("val", val_ds), ("train", train_ds)):
        for name, (st, te) in pairs.items():
            held[f"{split} · {name}"] = heldout_loss(
                st, te, _images(ds), loss_cfg=loss_cfg, crops=crops, photometric=photometric)
            print(f"[head_check] loss {split} {name}: {held[f'{split} · {name}']}", flush=True)
    diag_crops = CropConfig(**{**crops.__dict__, "global_size": 112, "local_size": 48})
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, feats in models.items():
        refs, _ = reference_tokens(feats, _images(train_ds), input_size=112,
                                   n_refs=DIAG["n_refs"], seed=DIAG["seed"])  # fmt: skip
        c = cross_view_consistency(
            feats, _images(val_ds), refs, crops=diag_crops,
            photometric=PhotometricParams(train.jitter_strength, train.blur_strength),
            patch_size=16, roi_k=DIAG["roi_k"], k=DIAG["k"], seed=DIAG["seed"],
        ).to_dict()  # fmt: skip
        q, ql = _patch_features(feats, val_ds, size)
        r, rl = _patch_features(feats, train_ds, size)
        nbr = neighbour_label_agreement(q, ql, r, rl, k=DIAG["k"])
        rows[name] = {"c": c["mean"], "c_chance": c["chance"], "nbr": nbr}
        print(f"[head_check] {name}: c={c['mean']:.3f} nbr(fg)={nbr['foreground']:.3f}",
              flush=True)  # fmt: skip
    result = {"run": str(run), "diagnostic": DIAG, "rows": rows, "loss": held,
              "seconds": time.perf_counter() - t0,
              "neco": {k: train.__dict__[k] for k in ("epochs", "lr_backbone", "lr_heads",
                                                      "momentum_start")}}  # fmt: skip
    lines = [
        "<!-- GENERATED by `python -m bench.head_check`; do not edit by hand. -->", "",
        "# Cross-view consistency on the head (what the NeCo loss trains) vs the backbone", "",
        f"One demo run (`dvc repro`, seed {seed}); c = overlap of the top-{DIAG['k']} of "
        f"{DIAG['n_refs']} train-patch references for ROI-aligned patches of two augmented "
        f"views of each val image (chance {rows['backbone · init']['c_chance']:.3f}); nbr (fg) "
        "= fraction of a foreground val patch's top-10 train-patch neighbours with its label.",
        "", "| features | c | nbr (fg) | nbr (all) |", "|:---|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['c']:.3f} | {r['nbr']['foreground']:.3f} | "
                     f"{r['nbr']['agreement']:.3f} |")  # fmt: skip
    lines += [
        "", "## The NeCo loss on the run's own views", "",
        "Training crop geometry, augmentation and loss settings, in-batch references (16 per "
        "image, a fixed draw), eval mode; H(Q) = the teacher's rank entropy, the loss's lower "
        "bound (reached when the student ranks as the teacher). gap = loss − H(Q): what "
        "cross-view inconsistency costs.", "",
        "| images · state | loss | H(Q) | gap | loss global–global | loss global–local |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for name, r in held.items():
        lines.append(f"| {name} | {r['loss']:.3f} | {r['teacher_entropy']:.3f} | "
                     f"{r['gap']:.3f} | {r['loss_global_global']:.3f} | "
                     f"{r['loss_global_local']:.3f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
