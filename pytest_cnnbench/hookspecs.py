"""Hooks pytest-cnnbench calls; conftest.py files and plugins may implement them."""

from __future__ import annotations

from typing import Any, Optional

import pytest


@pytest.hookspec(firstresult=True)
def pytest_cnnbench_environment(config: pytest.Config, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Describe the machine and software for the report header and result files.

    The default implementation gives versions, platform, CPU and the devices seen
    in ``results``; return a dict to replace it. To add to it instead, implement
    ``pytest_cnnbench_update_environment``.
    """


def pytest_cnnbench_update_environment(config: pytest.Config, environment: dict[str, Any]) -> None:
    """Change the environment in place (add a field, drop one), whichever hook produced it."""


@pytest.hookspec(firstresult=True)
def pytest_cnnbench_format_table(config: pytest.Config, results: list[dict[str, Any]]) -> str:
    """Return the terminal summary table for ``results``; the default uses tabulate."""


def pytest_cnnbench_update_json(config: pytest.Config, document: dict[str, Any]) -> None:
    """Change a result file's document in place before it is written (``--cnn-json`` and
    ``.json`` reports): e.g. add a top-level key. Its ``results`` and ``environment`` are the
    run's own; what is added must be JSON."""


def pytest_cnnbench_cell_measured(cell: Any, prepared: Any, result: Any) -> None:
    """Called once per cell after its measurement, while its prepared backend is still open and no
    timing lock is held: ``cell`` is the ``cnnbench`` fixture's runner (spec, model, process cache, item,
    ``inputs``: the cell's images, labels and batch; ``lock``: the machine's timing lock), ``prepared``
    the backend's prepared model (``artifact_path`` where it has a file on disk), ``result`` the cell's
    ``CellResult`` (``result["key"] = ...`` adds a field to its row; ``result.latency_ms`` is None when
    timing is off). Sub-plugins such as the cold start (``coldstart/``) and LoadGen's scenarios
    (``mlperf/``) measure more of the cell here; one that times takes ``cell.lock.exclusive()`` itself."""


def pytest_cnnbench_check_options(config: pytest.Config) -> list[str]:
    """Read and check a sub-plugin's own options (keeping what it needs in ``config.stash``), while the
    core checks its own: return the problems, one message each, and one usage error names them all."""


def pytest_cnnbench_report_sections(config: Optional[pytest.Config],
                                    results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Sections to add to the HTML page and pytest-html's summary, under the table: a list of
    ``(title, html)``, empty when there is nothing to show. ``config`` is None when the report command
    line (``python -m pytest_cnnbench.report``) writes the page outside a pytest run."""


def pytest_cnnbench_result(config: pytest.Config, result: dict[str, Any]) -> None:
    """Called (on the controlling process) once for each finished cell's result."""
