"""Stage `refs`: the sha256 of the files behind `train.weights` and `eval.checkpoint`.

Runs on every `dvc repro` (``always_changed``), so that overwriting such a file re-runs exactly
the stages that read it; see :mod:`neco.models.refs`. Offline, a `neco_release:` checkpoint that
is not in the hub cache fails here within seconds, naming the file and how to place it.

Being the pipeline's first stage, it also prints the run's plan (``python -m neco show-config
--plan``: downloads, disk, optimiser steps, estimated GPU hours per stage) before anything heavy
starts. The plan is information only: it is not an output and cannot fail the stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neco.config import load_subset
from neco.models.refs import EvalRefParams, TrainRefParams

PARAMS = ["train.weights", "eval.checkpoint", "eval.checkpoint_key", "eval.release_revision"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--train-weights", type=Path, required=True, help="record to write")
    parser.add_argument("--eval-checkpoint", type=Path, required=True, help="record to write")
    args = parser.parse_args(argv)

    train = load_subset(args.params, "train", TrainRefParams)
    ev = load_subset(args.params, "eval", EvalRefParams)
    _print_plan(args.params)

    from neco.io import write_json
    from neco.models.refs import eval_checkpoint_ref, train_weights_ref

    write_json(args.train_weights, train_weights_ref(train.weights))
    write_json(args.eval_checkpoint, eval_checkpoint_ref(
        ev.checkpoint, checkpoint_key=ev.checkpoint_key, revision=ev.release_revision))
    print(f"[refs] train.weights={train.weights}, eval.checkpoint={ev.checkpoint}")


def _print_plan(params: Path) -> None:
    try:
        from neco.show import load_resolved, plan, render_plan

        resolved = load_resolved(params)
        text = render_plan(plan(resolved))
    except Exception as err:  # the plan is advice; the stages that need the values check them
        print(f"[refs] no plan: {type(err).__name__}: {err}", flush=True)
        return
    print(f"[refs] {resolved.summary}", flush=True)
    for line in text.splitlines():
        print(f"[refs] {line}", flush=True)


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(main)
