"""Whole-file validation of ``params.yaml``: every section, every dataset block, no unknown key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from neco.config.loader import ConfigError, _select, build_section, load_value, read_params
from neco.config.sections import SECTION_SCHEMAS

TOP_LEVEL_SCALARS: dict[str, type] = {"seed": int, "preset": str}

#: Builds some sections itself from the whole file (name -> dataclass), e.g. ``train`` and
#: ``crops``, whose ``null`` recipe keys only the backbone registry can fill.
Resolver = Callable[[dict[str, Any], str], Mapping[str, Any]]


def validate_params(
    params_path: str | Path, dataset_schemas: Mapping[str, type],
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    """Validate a whole params file: every section, every dataset block, no unknown sections.

    Args:
        params_path: path of ``params.yaml``.
        dataset_schemas: the config dataclass of each known ``datasets.<name>`` block
            (``neco.data.registry.validate_params`` passes the registry's).
        resolver: builds the sections it returns (``neco.models.recipes`` for ``train`` and
            ``crops``); the others are built from their schema.

    Returns:
        The loaded sections by name (dataclasses), plus ``datasets`` as a dict of dataclasses.
    """

    path = Path(params_path)
    params = read_params(path)
    schemas = SECTION_SCHEMAS

    known = set(schemas) | set(TOP_LEVEL_SCALARS) | {"datasets"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected {sorted(known)}")
    out: dict[str, Any] = {}
    for key, tp in TOP_LEVEL_SCALARS.items():
        out[key] = load_value(path, key, tp)
    resolved = dict(resolver(params, str(path))) if resolver is not None else {}
    for name, schema in schemas.items():
        out[name] = resolved[name] if name in resolved else build_section(
            _select(params, name, path), schema, key=name, source=str(path))
    datasets = _select(params, "datasets", path)
    if not isinstance(datasets, dict):
        raise ConfigError(f"{path}: datasets: expected a mapping of dataset blocks")
    out["datasets"] = {}
    for name, block in datasets.items():
        if name not in dataset_schemas:
            raise ConfigError(
                f"{path}: datasets.{name}: unknown source; expected one of "
                f"{sorted(dataset_schemas)}"
            )
        schema = dataset_schemas[name]
        out["datasets"][name] = build_section(
            block, schema, key=f"datasets.{name}", source=str(path)
        )
    data = out["data"]
    for src in data.sources:
        if src not in datasets:
            raise ConfigError(f"{path}: data.sources: {src!r} has no datasets.{src} block")
    return out
