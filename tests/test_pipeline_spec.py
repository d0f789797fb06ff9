"""dvc.yaml is in sync with the stages: declared params, commands, paths (STYLE P4-P6, P10)."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from neco.show import validate_params

ROOT = Path(__file__).resolve().parents[1]


def _dvc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _expand(stage: dict[str, Any], params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(item, stage body) per foreach item, with ${item} substituted (or one entry)."""
    if "foreach" not in stage:
        return [("", stage)]
    ref = re.fullmatch(r"\$\{(.+)\}", stage["foreach"]).group(1)  # type: ignore[union-attr]
    items: Any = params
    for part in ref.split("."):
        items = items[part]
    body = yaml.safe_dump(stage["do"])
    if isinstance(items, dict):  # foreach over a mapping: ${key} and ${item}
        return [(key, yaml.safe_load(body.replace("${key}", key).replace("${item}", str(value))))
                for key, value in items.items()]
    return [(item, yaml.safe_load(body.replace("${item}", item))) for item in items]


def _resolve_vars(text: str, params: dict[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        node: Any = params
        for part in m.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([a-z_.]+)\}", sub, text)


def _stage_code_closure(script: Path) -> set[str]:
    """The ``neco/`` deps a stage script needs: its import closure, as package dirs or modules.

    ``neco/<pkg>`` for a module inside a subpackage, ``neco/<mod>.py`` for a top-level module.
    Function-level imports count (tests/test_import_graph.py builds the graph).
    """
    from test_import_graph import _modules, _resolve, import_graph

    modules, graph = _modules(), import_graph()
    start: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neco"):
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("neco")]
        start |= {m for m in (_resolve(n, modules) for n in names) if m}
    # A package directory is one dep, so every module in it may run (the dataset registry, for
    # one, imports its sources by name): close over whole packages until nothing is added.
    def package(mod: str) -> str:
        if mod == "neco":
            return "neco/__init__.py"
        parts = mod.split(".")
        is_pkg = modules[mod].name == "__init__.py"
        return f"neco/{parts[1]}" if len(parts) > 2 or is_pkg else f"neco/{parts[1]}.py"

    seen: set[str] = set()
    todo = list(start)
    while todo:
        mod = todo.pop()
        if mod in seen or mod == "neco":
            continue
        seen.add(mod)
        todo.extend(graph[mod])
        todo.extend(m for m in modules if package(m) == package(mod) and m != "neco")
    out = {package(mod) for mod in seen - {"neco"}}
    return out


def _expanded_stages() -> list[tuple[str, str, dict[str, Any]]]:
    params = _params()
    out = []
    for name, stage in _dvc()["stages"].items():
        for item, body in _expand(stage, params):
            body = yaml.safe_load(_resolve_vars(yaml.safe_dump(body), params))
            out.append((name, item, body))
    return out


STAGES = _expanded_stages()
STAGE_IDS = [f"{n}@{i}" if i else n for n, i, _ in STAGES]


@pytest.mark.parametrize(("name", "item", "body"), STAGES, ids=STAGE_IDS)
def test_declared_params_match_what_the_stage_reads(
    name: str, item: str, body: dict[str, Any]
) -> None:
    argv = shlex.split(body["cmd"])
    assert argv[:2] == ["python", "-m"], f"{name}: stages run as `python -m stages.<name>`"
    module = importlib.import_module(argv[2])
    fmt = {"dataset": item}
    if "--protocol" in argv:
        fmt["protocol"] = argv[argv.index("--protocol") + 1]
    expected = sorted(p.format(**fmt) for p in module.PARAMS)
    assert sorted(body.get("params", [])) == expected, (
        f"{name}@{item}: dvc.yaml params drifted from {argv[2]}.PARAMS"
    )


@pytest.mark.parametrize(("name", "item", "body"), STAGES, ids=STAGE_IDS)
def test_paths_in_cmd_are_declared(name: str, item: str, body: dict[str, Any]) -> None:
    """Every path argument of the command is a declared dep or out (or inside one)."""
    declared = [
        next(iter(d)) if isinstance(d, dict) else d
        for d in body.get("deps", []) + body.get("outs", []) + body.get("metrics", [])
        + body.get("plots", [])
    ]
    argv = shlex.split(body["cmd"])
    for flag, value in zip(argv, argv[1:], strict=False):  # (argument, next argument) pairs
        # --checkpoints: the resume side channel; --timings: wall times (untracked, no result)
        skipped = ("--params", "--dataset", "--protocol", "--checkpoints", "--timings")
        if not flag.startswith("--") or flag in skipped:
            continue
        if "/" not in value:
            continue
        assert any(
            value == d
            or value.startswith(d.rstrip("/") + "/")
            or d.startswith(value.rstrip("/") + "/")
            for d in declared
        ), f"{name}@{item}: {flag} {value} is neither a dep nor an out"


def test_declared_params_exist_in_params_yaml() -> None:
    params = _params()
    for name, item, body in STAGES:
        for key in body.get("params", []):
            node: Any = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (
                    f"{name}@{item}: param {key} missing"
                )
                node = node[part]


def test_params_yaml_validates_and_every_key_is_commented() -> None:
    """params.yaml is generated; its source conf/ has a comment on every value line."""
    validate_params(ROOT / "params.yaml")
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        _every_value_commented(path)


def _every_value_commented(path: Path) -> None:
    name = path.relative_to(ROOT)
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        # a key line with a value must carry a comment; pure section headers may too
        if re.match(r"^[a-z_0-9]+:\s*\S", stripped) and "#" not in stripped:
            if not stripped.endswith(":"):
                pytest.fail(f"{name}:{lineno}: `{stripped}` has no comment")


def test_metrics_and_plots_declared_at_top_level() -> None:
    dvc = _dvc()
    assert dvc["metrics"] == ["reports/metrics.json", "reports/pretrain/metrics.json"]
    plot_files = [next(iter(p)) for p in dvc["plots"]]
    assert all(p.startswith(("reports/train/", "reports/pretrain/")) for p in plot_files)
    pretrain = dvc["stages"]["pretrain"]
    assert [next(iter(m)) for m in pretrain["metrics"]] == ["reports/pretrain/metrics.json"]
    assert [next(iter(m)) for m in pretrain["plots"]] == ["reports/pretrain/loss.tsv"]
    report_outs = [
        next(iter(o)) if isinstance(o, dict) else o for o in dvc["stages"]["report"]["outs"]
    ]
    assert "reports/metrics.json" in report_outs


@pytest.mark.parametrize(("name", "item", "body"), STAGES, ids=STAGE_IDS)
def test_code_deps_are_the_import_closure(name: str, item: str, body: dict[str, Any]) -> None:
    """A stage depends on exactly the ``neco/`` packages it imports: none missing, none extra."""
    argv = shlex.split(body["cmd"])
    script = ROOT / (argv[2].replace(".", "/") + ".py")
    declared = {d for d in body.get("deps", []) if isinstance(d, str) and d.startswith("neco")}
    assert f"stages/{script.name}" in body.get("deps", []), f"{name}: its script is not a dep"
    assert declared == _stage_code_closure(script), f"{name}@{item}: code deps drifted"


def test_timings_are_outside_every_output_and_git_ignored() -> None:
    """Wall times change on every run: they must not be part of any versioned output."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/reports/timings/" in ignored
    for name, item, body in STAGES:
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]
        assert not any(o.startswith("reports/timings") for o in outs), f"{name}@{item}"
        argv = shlex.split(body["cmd"])
        if "--timings" in argv:
            assert argv[argv.index("--timings") + 1].startswith("reports/timings/")
