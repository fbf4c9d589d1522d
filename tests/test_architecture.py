"""The package's shape as docs/architecture.md promises it: every module on the map, short functions in
the measuring path, each rule defined in one module. Reads source only (ast): no torch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "pytest_cnnbench"
MAP = REPO / "docs" / "architecture.md"
# The modules a cell's measurement runs through, from the fixture to the row (docs/architecture.md).
MEASURING_PATH = ["runner.py", "cell/", "timing.py", "configchoice.py", "threadchoice.py", "pytestbenchmark.py",
                  "stats.py", "machine.py", "process_cache.py", "accuracy.py", "memory.py", "gpu.py", "calibration.py",
                  "reference_rule.py", "between_sessions.py", "backends/", "coldstart/", "mlperf/"]
LONGEST_FUNCTION = 60
# Rules that once had twins: each must be defined (assigned or def'd at module level) in exactly one module.
ONE_HOME = ["EAGER_LACKS", "OVER_EAGER_FP32", "PACE_TOLERANCE", "cpu_count", "UNSTABLE_CI", "wrap_bare_module",
            "own_spread_reason", "benchmark_disabled", "remeasure_reason", "top1_agrees", "resolve"]


def modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def mapped_modules(text: str) -> set[str]:
    """The .py files the tree in docs/architecture.md names, as paths inside the package."""
    tree = text.split("```")[1]
    found, folder = set(), ""
    for line in tree.splitlines()[2:]:  # after "pytest_cnnbench/"
        match = re.match(r"( *)(\S+)", line)
        if not match or not match.group(2).endswith((".py", "/")):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        if name.endswith("/"):
            folder = name
        else:
            found.add(name if depth == 1 else folder + name)
    return found


def function_lengths(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(node.end_lineno - node.lineno + 1, f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_every_module_is_on_the_map_and_the_map_names_no_missing_module():
    mapped = mapped_modules(MAP.read_text())
    assert len(mapped) > 40, "the tree in docs/architecture.md was not read"
    unmapped = {m for m in modules() if not m.endswith("__init__.py")} - mapped  # a package's __init__ is optional
    assert sorted(unmapped) == [], "modules missing from docs/architecture.md's tree"
    assert sorted(mapped - set(modules())) == [], "docs/architecture.md names modules that do not exist"


def test_no_function_in_the_measuring_path_is_over_60_lines():
    paths = [p for entry in MEASURING_PATH
             for p in (sorted((PACKAGE / entry).rglob("*.py")) if entry.endswith("/") else [PACKAGE / entry])]
    assert len(paths) > 30
    long = sorted((n, where) for path in paths for n, where in function_lengths(path) if n > LONGEST_FUNCTION)
    assert long == [], f"functions over {LONGEST_FUNCTION} lines in the measuring path"


def test_the_fixture_facade_is_under_150_lines():
    assert len((PACKAGE / "runner.py").read_text().splitlines()) < 150


def test_each_rule_that_once_had_a_twin_is_defined_in_one_module():
    homes: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for module in modules():
        for node in ast.parse((PACKAGE / module).read_text()).body:
            names = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                     else [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)])
            for name in names:
                if name in homes:
                    homes[name].append(module)
    assert {name: where for name, where in homes.items() if len(where) != 1} == {}
