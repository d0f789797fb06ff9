"""Typed configuration: every ``params.yaml`` section becomes a frozen dataclass.

``params.yaml`` is the single source of values the stages read (STYLE P1-P3), composed from
``conf/`` (:mod:`neco.config.presets`), where every value has its comment. Schemas state types
only. Loading a section merges the YAML into an OmegaConf structured config in struct mode, so

* an unknown key raises ``ConfigError`` naming ``<file>: <section>.<key>``,
* a wrong type raises naming the key, the value and the expected type,
* a missing value raises naming the key.

Enum-typed fields are written in YAML by their *value* (``sort_network: bitonic``); the loader
maps values to members before OmegaConf validates them, and an unknown value lists the valid
ones. Nothing else in the project reads ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A params file does not match its schema; the message names file, key and expectation."""


# --------------------------------------------------------------------------------------------
# Sections owned by this module (the others are defined next to the component they configure).


# --------------------------------------------------------------------------------------------
# Generic loader.


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _normalise_enums(tp: Any, value: Any, key: str) -> Any:
    """Map enum *values* written in YAML to member names, recursively along the schema."""
    tp = _strip_optional(tp)
    if value is None:
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, enum.Enum):
            return value
        by_value = {str(m.value): m.name for m in tp}
        if str(value) in by_value:
            return by_value[str(value)]
        raise ConfigError(
            f"{key}: invalid value {value!r}; expected one of {sorted(by_value)}"
        )
    if _is_dataclass_type(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return {
            k: _normalise_enums(hints[k], v, f"{key}.{k}") if k in hints else v
            for k, v in value.items()
        }
    origin = typing.get_origin(tp)
    if origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_normalise_enums(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict) and isinstance(value, dict):  # noqa: UP006
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _normalise_enums(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    return value


#: Top-level keys of a params file besides the ``SECTION_SCHEMAS`` sections: scalars and the
#: ``datasets`` blocks. A new top-level key is added here (and to ``neco.config.validate``).
EXTRA_TOP_LEVEL_KEYS: tuple[str, ...] = ("preset", "seed", "datasets")


def top_level_keys() -> frozenset[str]:
    """Every top-level key a params file may have (sections + ``EXTRA_TOP_LEVEL_KEYS``)."""
    from neco.config.sections import SECTION_SCHEMAS  # schemas only, no torch

    return frozenset(SECTION_SCHEMAS) | frozenset(EXTRA_TOP_LEVEL_KEYS)


def read_params(params_path: str | Path) -> dict[str, Any]:
    """Read a params file into plain containers, with a clear error for bad YAML.

    Raises:
        ConfigError: the file is missing, is not YAML, is not a mapping, or has a top-level key
            that is not one of :func:`top_level_keys` (a misspelt section would otherwise be
            ignored silently); the message lists the known keys.
    """
    path = Path(params_path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from err
    container = OmegaConf.to_container(raw, resolve=False)
    if not isinstance(container, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    known = top_level_keys()
    unknown = sorted(str(k) for k in container if k not in known)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected only "
                          f"{sorted(known)}")
    # the stubs allow any YAML scalar as a key; a params file's top-level keys are section names
    return cast(dict[str, Any], container)


def _select(params: dict[str, Any], section: str, path: Path) -> Any:
    node: Any = params
    for part in section.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path}: missing key '{section}' (no '{part}')")
        node = node[part]
    return node


_THAWED: dict[type, type] = {}


def _thaw_type(tp: Any) -> Any:
    """The same type with every frozen dataclass replaced by a mutable mirror.

    OmegaConf turns frozen dataclasses into read-only nodes that cannot be merged into, so
    validation runs on mirrors; :func:`_freeze` converts the result back to the real schema.
    """
    if _is_dataclass_type(tp):
        if tp not in _THAWED:
            hints = typing.get_type_hints(tp)
            fields = [(f.name, _thaw_type(hints[f.name])) for f in dataclasses.fields(tp)]
            _THAWED[tp] = dataclasses.make_dataclass(f"{tp.__name__}Params", fields)
        return _THAWED[tp]
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = tuple(_thaw_type(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return typing.Union[args]  # noqa: UP007
    if origin is list:
        return list[args[0]]  # type: ignore[valid-type]
    if origin is dict:
        return dict[args[0], args[1]]  # type: ignore[valid-type]
    return tp


def _freeze(tp: Any, value: Any) -> Any:
    """Convert a validated mirror instance back into the frozen schema type."""
    tp = _strip_optional(tp)
    if value is None:
        return None
    if _is_dataclass_type(tp):
        hints = typing.get_type_hints(tp)
        return tp(
            **{
                f.name: _freeze(hints[f.name], getattr(value, f.name))
                for f in dataclasses.fields(tp)
            }
        )
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_freeze(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: _freeze(item, v) for k, v in value.items()}
    return value


def build_section(value: Any, schema: type[T], *, key: str, source: str = "params") -> T:
    """Validate ``value`` (plain containers) against ``schema`` and return the dataclass."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: {key}: expected a mapping for {schema.__name__}, got {value!r}"
        )
    value = _normalise_enums(schema, value, key)
    # Structured dataclass nodes reject unknown keys and wrong types by themselves; struct mode
    # is not set on the root because it would also close `dict[str, ...]` fields (archives).
    base = OmegaConf.structured(_thaw_type(schema))
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(value))
        obj = _freeze(schema, OmegaConf.to_object(merged))
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", "") or ""
        full = f"{key}.{sub}" if sub else key
        msg = str(getattr(err, "msg", err)).splitlines()[0]
        if "Missing mandatory value" in msg:
            msg = (
                "missing value (every key must be set in params.yaml; null is allowed only "
                "where documented)"
            )
        raise ConfigError(f"{source}: {full}: {msg}") from err
    assert isinstance(obj, schema)
    return obj


def load_section(params_path: str | Path, section: str, schema: type[T]) -> T:
    """Load one (possibly dotted) section of a params file as a frozen dataclass.

    Args:
        params_path: path of ``params.yaml``.
        section: dotted key, e.g. ``train`` or ``datasets.synthetic``.
        schema: the frozen dataclass type describing the section.

    Raises:
        ConfigError: naming the file and the offending key.
    """
    path = Path(params_path)
    params = read_params(path)
    return build_section(_select(params, section, path), schema, key=section, source=str(path))


def load_subset(params_path: str | Path, section: str, schema: type[T]) -> T:
    """Load only the keys of ``section`` that ``schema`` declares (the others are not read).

    For stages that read a few keys of a large section (e.g. ``weights`` reads
    ``train.backbone``, ``train.weights`` and ``train.weights_cache``) and must stay fast.
    """
    path = Path(params_path)
    node = _select(read_params(path), section, path)
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: {section}: expected a mapping")
    names = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    subset = {k: v for k, v in node.items() if k in names}
    return build_section(subset, schema, key=section, source=str(path))


def load_value(params_path: str | Path, key: str, expected: type[T]) -> T:
    """Load a single scalar key (e.g. ``seed``) and check its type."""
    path = Path(params_path)
    value = _select(read_params(path), key, path)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key}: expected {expected.__name__}, got {value!r}")
    return value


def to_plain(obj: Any) -> Any:
    """A dataclass (tree) as JSON-able plain containers, enums as their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple, ListConfig)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (dict, DictConfig)):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj
