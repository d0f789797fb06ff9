"""Presets: ``conf/`` is the source of ``params.yaml`` (Hydra composition, run by DVC).

``conf/config.yaml`` holds every value with its comment; the values that differ between the CPU
demo and the paper are ``???`` there and set by exactly one file per preset,
``conf/preset/{demo,paper}.yaml``. With ``hydra.enabled`` in ``.dvc/config``, every
``dvc exp run [-S key=value ...]`` composes ``conf/config.yaml`` + the selected preset + the
``-S`` overrides and writes the result to ``params.yaml`` before the pipeline runs, so DVC sees
(and ``dvc.lock`` records) each stage's effective values, and ``-S preset=paper`` switches the
dataset lists the ``foreach`` stages iterate over. ``params.yaml`` is committed in exactly the
form that composition writes: an ``-S`` run changes only the lines of the keys it sets.

:func:`compose_params` and :func:`write_params` are the same composition for plain
``dvc repro`` users and for ``python -m neco show-config``. :func:`preset_values` tells the
recipe resolution which values came from the preset. Torch-free; Hydra is imported only by the
composing functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from neco.config.loader import ConfigError

#: The Hydra configuration directory and primary config name (DVC's defaults).
CONF_DIR = "conf"
CONFIG_NAME = "config"
PRESETS = ("demo", "paper")


def conf_dir_for(params_path: str | Path) -> Path:
    """The ``conf/`` directory next to a params file."""
    return Path(params_path).resolve().parent / CONF_DIR


def preset_file(conf_dir: Path, name: str) -> Path:
    """``conf/preset/<name>.yaml``, or a ``ConfigError`` listing the presets."""
    path = conf_dir / "preset" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "preset").glob("*.yaml"))
        raise ConfigError(f"preset={name}: no {path}; expected one of {known}")
    return path


def preset_values(params_path: str | Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The active preset's values (nested), or ``None`` if there is no ``conf/`` or preset.

    Used only to label origins: a params value equal to the preset's is ``preset``.
    """
    name = params.get("preset")
    conf = conf_dir_for(params_path)
    if not isinstance(name, str) or not (conf / "preset" / f"{name}.yaml").is_file():
        return None
    data = yaml.safe_load(preset_file(conf, name).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{preset_file(conf, name)}: expected a mapping")
    return data


def compose_params(conf_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()
                   ) -> dict[str, Any]:
    """Compose ``conf/`` with Hydra overrides (``dvc exp run -S`` syntax) into plain containers.

    Raises:
        ConfigError: a bad override (unknown key, unknown preset) or a value left ``???``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = Path(conf_dir).resolve()
    if not (conf / f"{CONFIG_NAME}.yaml").is_file():
        raise ConfigError(f"{conf}: no {CONFIG_NAME}.yaml (the Hydra config of params.yaml)")
    try:
        with initialize_config_dir(str(conf), version_base=None):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{conf}: no value for {missing} (every preset must set them)")
        plain = OmegaConf.to_container(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{conf}: {str(err).splitlines()[0]}") from err
    assert isinstance(plain, dict)
    return plain  # type: ignore[return-value]


def params_text(conf_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The exact text DVC's Hydra composition writes to ``params.yaml`` (``OmegaConf.to_yaml``)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.to_yaml(OmegaConf.create(compose_params(conf_dir, overrides))))


def write_params(conf_dir: str | Path, out: str | Path,
                 overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the composition to ``out`` atomically (for ``dvc repro`` without ``exp run``)."""
    import os
    import tempfile

    path = Path(out)
    text = params_text(conf_dir, overrides)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
