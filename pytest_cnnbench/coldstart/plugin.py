"""The cold-start sub-plugin: ``--cnn-cold-start`` and its hook implementations.

Always registered (by ``pytest_cnnbench.plugin``), so its options parse; it acts only when
``--cnn-cold-start`` (ini ``cnn_cold_start``) is given. Importing it imports no torch and no runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import pytest


OPTIONS = {
    "cnn-cold-start": ("after each cell's measurement, deploy its artifact in fresh Python processes and time the "
                       "first answer, with the runtime's cache cold and warm (docs/coldstart.md)", None),
    "cnn-cold-start-runs": ("cold start: children of each kind (cold, warm), alternating", "3"),
    "cnn-cold-start-timeout": ("cold start: kill a child (and fail the cell) after this many seconds", "300"),
}
FLAGS = {"cnn-cold-start"}


@dataclasses.dataclass(frozen=True)
class ColdStartSettings:
    runs: int
    timeout_s: float


SETTINGS_KEY = pytest.StashKey[Optional[ColdStartSettings]]()
FAILURE_KEY = pytest.StashKey[str]()  # per item: why its cold start failed


def pytest_addoption(parser: pytest.Parser) -> None:
    from ..options import add_options

    add_options(parser, OPTIONS, FLAGS)


def parse(config: pytest.Config) -> Optional[ColdStartSettings]:
    """The settings when --cnn-cold-start is on, else None; a bad value is a usage error."""
    from ..options import _count, _positive_number, _raw

    runs = _count(_raw(config, "cnn-cold-start-runs"), "cnn-cold-start-runs")
    timeout = _positive_number(_raw(config, "cnn-cold-start-timeout"), "cnn-cold-start-timeout", float)
    return ColdStartSettings(runs, timeout) if _raw(config, "cnn-cold-start") else None


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.help:
        config.stash[SETTINGS_KEY] = parse(config)


def pytest_cnnbench_cell_measured(cell: Any, prepared: Any, result: Any) -> None:
    settings = cell.request.config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return
    from .run import measure

    record = measure(cell, prepared, result, settings.runs, settings.timeout_s)
    result["cold_start"] = record
    if record.status == "failed":
        cell.item.stash[FAILURE_KEY] = f"cold start: {record.error}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A cell whose cold start failed fails, once its test has run (its figures are recorded first)."""
    outcome = yield
    failure = item.stash.get(FAILURE_KEY, None)
    if failure:
        pytest.fail(failure, pytrace=False)
    return outcome


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if config.stash.get(SETTINGS_KEY, None) is None or hasattr(config, "workerinput"):
        return
    from ..plugin import SESSION_KEY
    from .table import format_cold_start_table

    session = config.stash.get(SESSION_KEY, None)
    text = format_cold_start_table(session.results) if session is not None else None
    if text:
        terminalreporter.write_line(text)
