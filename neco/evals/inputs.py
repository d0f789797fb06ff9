"""Stage-side inputs and outputs of the eval protocols (the protocols themselves do no I/O).

* Hummingbird low-shot subsets read from a prepared tree
  (``splits/hbird/1_div_<d>/<name>_<d>_<seed>.txt``, datasets.md §7, §9);
* the per-protocol figure drawn from a result's in-memory ``examples``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neco.figures import plot_cluster_maps, plot_hbird, plot_linear

_SUBSET_FILE = re.compile(r"^(?P<name>.+)_(?P<div>\d+)_(?P<seed>\d+)\.txt$")


def hbird_subsets(prepared_root: Path) -> dict[str, dict[int, list[str]]]:
    """Low-shot memory subsets found in a prepared tree: ``{"1/8": {42: [ids...]}, ...}``.

    Missing directories give an empty mapping (the protocol then derives seeded subsets and
    flags them as derived).
    """
    root = Path(prepared_root) / "splits" / "hbird"
    out: dict[str, dict[int, list[str]]] = {}
    if not root.is_dir():
        return out
    for folder in sorted(root.glob("1_div_*")):
        div = folder.name.split("_")[-1]
        for f in sorted(folder.glob("*.txt")):
            m = _SUBSET_FILE.match(f.name)
            if not m or m.group("div") != div:
                continue
            ids = [line for line in f.read_text().splitlines() if line]
            out.setdefault(f"1/{div}", {})[int(m.group("seed"))] = ids
    return out


def draw_figure(protocol: str, results: Mapping[str, Any], *, class_names: list[str],
                ignore_index: int, out: Path) -> None:
    """One picture per protocol from the results' ``examples`` (all models side by side)."""


    models = list(results)
    first = results[models[0]].examples
    images = [ex.image for ex in first]
    gts = [ex.gt for ex in first]
    if protocol == "overcluster":
        maps: dict[str, list[Any]] = {}
        for model in models:
            for ex in results[model].examples:
                for key, pred in ex.preds.items():
                    maps.setdefault(f"{model} {key}", []).append(pred)
        plot_cluster_maps(images, gts, maps, out, ignore_index=ignore_index)
        return
    preds = {m: [next(iter(ex.preds.values())) for ex in results[m].examples] for m in models}
    plot = plot_linear if protocol == "linear" else plot_hbird
    plot(images, gts, preds, class_names, out, ignore_index=ignore_index)
