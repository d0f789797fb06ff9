"""Settings behind each number: fingerprint footnotes and the "differs from paper" flag.

evaluation.md §1.7 reporting rule: every number in a generated table carries its fingerprint
(here as a footnote ``[n]``), and a number whose setting differs from the paper setting is
flagged (``⚑``). The paper setting per protocol comes from
``ReportConfig.paper_settings_<protocol>`` (evaluation.md §8 lists the likeliest settings;
which settings produced each paper number is partly unverified). Comparison is by the
result's structured ``settings`` dict, not by parsing fingerprint strings, so the flag can say
*what* differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from neco.config.sections import ReportConfig
from neco.report.collect import PROTOCOL_ORDER, EvalEntry, ReportInputError
from neco.report.paper import DATASET_LABELS

ROLE_NAMES: dict[str, str] = {"init": "init", "neco": "NeCo"}

PaperSetting = tuple[str, tuple[str, ...]]


def _lookup(settings: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = settings
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _as_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _same(ours: Any, paper: str) -> bool:
    text = _as_text(ours)
    try:
        return math.isclose(float(text), float(paper), rel_tol=1e-9)
    except ValueError:
        return text.strip().lower() == paper.strip().lower()


def parse_paper_settings(entries: Sequence[str], *, key: str) -> list[PaperSetting]:
    """Parse ``["input_size=504|512", ...]`` into ``[("input_size", ("504", "512")), ...]``.

    Raises:
        ReportInputError: an entry without ``=``, an empty key or an empty value; the message
            names ``report.paper_settings_<protocol>[i]``.
    """
    out = []
    for i, entry in enumerate(entries):
        name, sep, values = entry.partition("=")
        accepted = tuple(v.strip() for v in values.split("|"))
        if not sep or not name.strip() or not all(accepted):
            raise ReportInputError(f"{key}[{i}]: {entry!r}; expected 'key=value[|value...]'")
        out.append((name.strip(), accepted))
    return out


def setting_differences(settings: Mapping[str, Any],
                        paper: Sequence[PaperSetting]) -> list[str]:
    """How a result's ``settings`` differ from the paper's, e.g. ``["nn=exact (paper scann)"]``.

    A key the result does not record counts as a difference (``"k: not recorded (paper v)"``),
    so a mis-keyed paper setting shows up instead of passing silently.
    """
    diffs = []
    for name, accepted in paper:
        found, ours = _lookup(settings, name)
        want = "|".join(accepted)
        if not found:
            diffs.append(f"{name}: not recorded (paper {want})")
        elif not any(_same(ours, a) for a in accepted):
            diffs.append(f"{name}={_as_text(ours)} (paper {want})")
    return diffs


def training_differences(result: Mapping[str, Any]) -> list[str]:
    """The paper-recipe deviations of the training that produced a result's model.

    From ``provenance.training.deviations`` (``neco.models.recipes.Resolution``), as
    ``"training train.loss.roi_k=4 (paper 7)"``; empty for a model this pipeline did not train
    (the init, a baseline, a released checkpoint) or a training that matches the paper.
    """
    prov = result.get("provenance")
    training = prov.get("training") if isinstance(prov, Mapping) else None
    deviations = training.get("deviations") if isinstance(training, Mapping) else None
    if not isinstance(deviations, Mapping):
        return []
    order = training.get("summary_order") if isinstance(training, Mapping) else None
    keys = list(order) if isinstance(order, list) else sorted(deviations)
    return [f"training {k}={_as_text(deviations[k].get('value'))} "
            f"(paper {_as_text(deviations[k].get('paper'))})" for k in keys if k in deviations]


class Notes:
    """Fingerprint footnotes, numbered in order of first use.

    One footnote per (protocol, fingerprint, differences from the paper setting); it lists the
    dataset/model cells that use it.
    """

    def __init__(self, cfg: ReportConfig) -> None:
        self.paper = {
            p: parse_paper_settings(getattr(cfg, f"paper_settings_{p}"),
                                    key=f"report.paper_settings_{p}")
            for p in PROTOCOL_ORDER}
        self._num: dict[tuple[str, str, tuple[str, ...] | None], int] = {}
        self._users: dict[int, list[str]] = {}

    def mark(self, entry: EvalEntry, model: str) -> str:
        """``" [n]"``, or ``" [n]⚑"`` when the setting differs, for one model of ``entry``.

        The evaluation settings are compared with ``report.paper_settings_<protocol>``; a model
        this pipeline trained is also compared with the paper's *training* recipe (its
        ``provenance.training.deviations``: head, ROI, references, batch, epochs, ...).
        """
        res = entry.models[model]
        paper = self.paper.get(entry.protocol)
        diffs = tuple(setting_differences(res["settings"], paper)) if paper is not None else None
        trained = training_differences(res)
        if trained:
            diffs = (*(diffs or ()), *trained)
        n = self._num.setdefault((entry.protocol, res["fingerprint"], diffs), len(self._num) + 1)
        user = f"{DATASET_LABELS.get(entry.dataset, entry.dataset)} {ROLE_NAMES.get(model, model)}"
        if user not in self._users.setdefault(n, []):
            self._users[n].append(user)
        return f" [{n}]⚑" if diffs else f" [{n}]"

    def render(self) -> list[str]:
        """One markdown bullet per footnote."""
        lines = []
        for (protocol, fingerprint, diffs), n in self._num.items():
            if diffs is None:
                verdict = "no paper setting to compare"
            elif diffs:
                verdict = "⚑ differs from the paper setting: " + "; ".join(diffs)
            else:
                verdict = "matches the paper setting"
            users = ", ".join(self._users[n])
            lines.append(f"- [{n}] {protocol} ({users}): `{fingerprint}`; {verdict}")
        return lines or ["No evaluation results."]
