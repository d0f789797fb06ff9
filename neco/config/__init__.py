"""Typed configuration: the ``params.yaml`` loader and every section schema, torch-free.

``loader`` turns a (possibly dotted) section of ``params.yaml`` into a frozen dataclass and names
``<file>: <section>.<key>`` on any unknown key, wrong type, missing value or bad enum value;
``sections``, ``method`` and ``evals`` hold the schemas (types only: values, with comments, live
in ``conf/``); ``presets`` composes ``conf/`` into ``params.yaml`` (Hydra, as ``dvc exp run``
does); ``validate`` checks a whole file. This package imports nothing from the rest
of ``neco`` and no torch, so every stage fails on a bad key in a fraction of a second; every other
package imports its config types from here.
"""

from neco.config.loader import (
    ConfigError,
    build_section,
    load_section,
    load_subset,
    load_value,
    read_params,
    to_plain,
)
from neco.config.method import EmaTiming, HeadConfig, Precision, TeacherHeadInit
from neco.config.sections import (
    SECTION_SCHEMAS,
    DataConfig,
    DownloadConfig,
    EvalConfig,
    FeaturesConfig,
    ReportConfig,
    RuntimeConfig,
    TrainConfig,
)
from neco.config.validate import validate_params

__all__ = [
    "SECTION_SCHEMAS",
    "ConfigError",
    "DataConfig",
    "DownloadConfig",
    "EmaTiming",
    "EvalConfig",
    "FeaturesConfig",
    "HeadConfig",
    "Precision",
    "ReportConfig",
    "RuntimeConfig",
    "TeacherHeadInit",
    "TrainConfig",
    "build_section",
    "load_section",
    "load_subset",
    "load_value",
    "read_params",
    "to_plain",
    "validate_params",
]
