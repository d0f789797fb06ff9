"""``python -m neco <command>``: look at the configuration before spending compute.

Commands:

* ``show-config [-S key=value ...] [--plan] [--data] [--json]``: the fully resolved value of
  every stage's params, each with its origin (params / preset / recipe) and a ⚑ where it differs
  from the paper setting for the backbone; ``--plan`` adds downloads, disk, optimiser steps and
  GPU-hour estimates. With ``-S`` it composes ``conf/`` exactly as ``dvc exp run -S`` would;
  without, it reads ``params.yaml``.
* ``compose [-S key=value ...]``: write ``params.yaml`` from ``conf/`` (what ``dvc exp run``
  does before it runs), for a plain ``dvc repro``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neco", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show-config", help="resolved configuration per stage, and the plan")
    comp = sub.add_parser("compose", help="write params.yaml from conf/ and -S overrides")
    for p in (show, comp):
        p.add_argument("-S", "--set-param", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="Hydra override, as in `dvc exp run -S`")
        p.add_argument("--params", type=Path, default=Path("params.yaml"))
    show.add_argument("--plan", action="store_true", help="downloads, disk, steps, GPU hours")
    show.add_argument("--data", action="store_true", help="include the download/prepare stages")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    from neco.config.presets import conf_dir_for, write_params

    if args.command == "compose":
        out = write_params(conf_dir_for(args.params), args.params, args.overrides)
        print(f"wrote {out} from {conf_dir_for(args.params)} "
              f"({' '.join(args.overrides) or 'no overrides'})")
        return 0

    from neco.show import (
        load_resolved,
        paper_setting,
        plan,
        render_plan,
        render_views,
        stage_views,
        views_json,
    )

    resolved = load_resolved(args.params, args.overrides)
    paper = paper_setting(resolved.backbone, conf_dir_for(args.params))
    views = stage_views(resolved, paper, include_data=args.data)
    if args.json:
        out_json = views_json(resolved, views)
        if args.plan:
            out_json["plan"] = plan(resolved, workers=_workers(resolved))
        print(json.dumps(out_json, indent=2, default=str))
        return 0
    sys.stdout.write(render_views(resolved, views))
    if args.plan:
        sys.stdout.write("\n" + render_plan(plan(resolved, workers=_workers(resolved))))
    return 0


def _workers(resolved: object) -> int:
    from neco.config.loader import build_section
    from neco.config.sections import RuntimeConfig

    runtime = build_section(resolved.params["runtime"], RuntimeConfig,  # type: ignore[attr-defined]
                            key="runtime")
    return runtime.workers()


if __name__ == "__main__":
    from neco.cli import run_stage

    run_stage(lambda: sys.exit(main()))
