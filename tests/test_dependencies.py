"""Issue 26: the documented installs run. What the package imports is what pyproject.toml declares:
an import that runs when the plugin loads needs a core dependency; an optional one is lazy (inside a
function) and declared (core or an extra); ``require(module, extra=E)`` names the extra that has it."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pytest_cnnbench"
# Import names of distributions that cannot be installed here (the gpu extra): by their documentation.
NOT_INSTALLABLE_HERE = {"torch_tensorrt": "torch-tensorrt", "modelopt": "nvidia-modelopt", "pynvml": "nvidia-ml-py",
                        "tensorrt": "tensorrt-cu13"}


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {normalize(Requirement(r).name) for r in project["dependencies"]}
    extras = {extra: {normalize(Requirement(r).name) for r in reqs}
              for extra, reqs in project.get("optional-dependencies", {}).items()}
    return core, extras


def distributions(module: str) -> set[str]:
    """The distributions that provide the top-level import ``module``."""
    found = metadata.packages_distributions().get(module)
    if found:
        return {normalize(d) for d in found}
    if module in NOT_INSTALLABLE_HERE:
        return {NOT_INSTALLABLE_HERE[module]}
    raise AssertionError(f"cannot tell which distribution provides {module!r}: install it or add it to "
                         "NOT_INSTALLABLE_HERE")


class Imports(ast.NodeVisitor):
    """Third-party imports of one module: (top-level name, line, lazy), and require(module, extra) calls."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int, bool]] = []
        self.required: list[tuple[str, str, int]] = []
        self.depth = 0

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, name: str, line: int) -> None:
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top != "pytest_cnnbench":
            self.found.append((top, line, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        if getattr(node.func, "id", None) == "require" and node.args and isinstance(node.args[0], ast.Constant):
            extra = next((k.value.value for k in node.keywords if k.arg == "extra" and isinstance(k.value, ast.Constant)),
                         None)
            if extra is not None:  # an extra chosen at run time (cpu or gpu) is not checked here
                self.required.append((node.args[0].value, extra, node.lineno))
        self.generic_visit(node)


def package_imports() -> list[tuple[str, Imports]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        visitor = Imports()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        out.append((str(path.relative_to(REPO)), visitor))
    return out


def test_every_import_is_declared_and_optional_ones_are_lazy():
    core, extras = declared()
    in_extras = set().union(*extras.values())
    problems = []
    for where, imports in package_imports():
        for module, line, lazy in imports.found:
            dists = distributions(module)
            if dists & core:
                continue
            if not lazy:
                problems.append(f"{where}:{line}: imports {module} when the plugin loads, but "
                                f"{'/'.join(sorted(dists))} is not a core dependency")
            elif not dists & in_extras:
                problems.append(f"{where}:{line}: imports {module}, but {'/'.join(sorted(dists))} is declared "
                                "neither as a dependency nor in an extra")
        for module, extra, line in imports.required:
            if extra not in extras or not distributions(module.split(".")[0]) & extras[extra]:
                problems.append(f"{where}:{line}: require({module!r}, extra={extra!r}): the extra does not declare it")
    assert not problems, "\n".join(problems)


def test_the_gpu_extra_declares_the_gpu_paths_imports_by_metadata():
    """The gpu extra cannot be installed here (CUDA 13 wheels, NVIDIA's index): check what it declares,
    in pyproject.toml and in the installed package's metadata, against what the GPU path imports."""
    core, extras = declared()
    gpu = extras["gpu"]
    for module in ("torch_tensorrt", "modelopt", "pynvml"):
        assert distributions(module) & gpu, f"the gpu extra lacks {module}'s distribution"
    assert "onnxruntime-gpu" in gpu and "torch" in gpu
    requires = [Requirement(r) for r in metadata.requires("pytest-cnnbench") or ()]
    installed_gpu = {normalize(r.name) for r in requires if r.marker and r.marker.evaluate({"extra": "gpu"})}
    installed_core = {normalize(r.name) for r in requires if not r.marker}
    assert gpu <= installed_gpu and core <= installed_core, (
        "the installed metadata differs from pyproject.toml: reinstall (bash .ci/setup)")
