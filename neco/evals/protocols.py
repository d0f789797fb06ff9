"""The registry of dense evaluation protocols (evaluation.md): linear probe, clustering and
Hummingbird.

``PROTOCOLS`` maps a protocol name (the ``eval.<name>`` params section and the metrics directory)
to its run function and its config dataclass. Every protocol is a pure function over a feature
extractor (or cached features) and datasets that returns a typed result with ``to_dict()``.
Importing this package does not import faiss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neco.config.evals import Autocast, ClusterConfig, HbirdConfig, LinearConfig, MetricConfig
from neco.evals.extract import extract_val_features
from neco.evals.hbird import hummingbird
from neco.evals.linear import linear_probe
from neco.evals.overcluster import cluster_eval


@dataclass(frozen=True)
class Protocol:
    """A registered protocol.

    Attributes:
        run: the protocol function (see its docstring for the call signature).
        config: its frozen config dataclass (types only; values from ``params.yaml``).
        uses_extractor: whether ``run`` needs a live extractor (False: cached features only).
    """

    run: Callable[..., Any]
    config: type
    uses_extractor: bool


PROTOCOLS: dict[str, Protocol] = {
    "linear": Protocol(linear_probe, LinearConfig, True),
    "overcluster": Protocol(cluster_eval, ClusterConfig, False),
    "hbird": Protocol(hummingbird, HbirdConfig, True),
}

__all__ = [
    "PROTOCOLS",
    "Autocast",
    "ClusterConfig",
    "HbirdConfig",
    "LinearConfig",
    "MetricConfig",
    "Protocol",
    "cluster_eval",
    "extract_val_features",
    "hummingbird",
    "linear_probe",
]
