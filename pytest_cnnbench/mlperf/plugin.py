"""The LoadGen sub-plugin: ``--cnn-scenario`` and its hook implementations.

Always registered (by ``pytest_cnnbench.plugin``), so its options parse; it acts only when
``--cnn-scenario`` (ini ``cnn_scenario``) names a scenario. Importing it imports no torch and no LoadGen.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import pytest

from .settings import ScenarioOptions

OPTIONS = {
    "cnn-scenario": ("also run MLPerf Inference scenarios through LoadGen on every cell: comma list of single-stream, "
                     "multi-stream, offline, server, or 'all' (needs pytest-cnnbench[mlperf])", None),
    "cnn-server-qps": ("server scenario: the Poisson arrival rate, queries/s (default: search the highest rate that "
                       "meets the latency bound)", None),
    "cnn-server-latency-ms": ("server scenario: the p99 latency bound, ms (default: mlperf.conf's, 15 for resnet50; "
                              "other models need it)", None),
    "cnn-scenario-seconds": ("minimum duration of each short LoadGen run, seconds (at least the queries early stopping "
                             "needs also run)", "3"),
    "cnn-scenario-timeout": ("kill a LoadGen test (and fail the cell) after this many seconds (default: 3x its expected "
                             "duration + 20 s)", None),
    "cnn-mlperf-official": ("LoadGen scenarios with mlperf.conf's durations and counts (600 s each) instead of short runs", None),
}
FLAGS = {"cnn-mlperf-official"}
SECTION_TITLE = "Deployment scenarios (MLPerf LoadGen)"

SETTINGS_KEY = pytest.StashKey[ScenarioOptions]()  # acts when its ``scenarios`` are not empty
VERDICT_KEY = pytest.StashKey[Any]()  # per item: cell.Verdict, when LoadGen skips or fails the cell


def pytest_addoption(parser: pytest.Parser) -> None:
    from ..options import add_options

    add_options(parser, OPTIONS, FLAGS)


def parse(config: pytest.Config) -> ScenarioOptions:
    """The settings (no ``scenarios`` when --cnn-scenario names none); a bad value is a usage error."""
    from ..options import _raw
    from .settings import ScenarioError, parse_positive, parse_scenarios, parse_server_qps

    official = bool(_raw(config, "cnn-mlperf-official"))
    try:
        return ScenarioOptions(
            scenarios=parse_scenarios(_raw(config, "cnn-scenario")),
            server_qps=parse_server_qps(_raw(config, "cnn-server-qps"), official),
            server_latency_ms=parse_positive(_raw(config, "cnn-server-latency-ms"), "cnn-server-latency-ms"),
            seconds=parse_positive(_raw(config, "cnn-scenario-seconds"), "cnn-scenario-seconds") or 3.0,
            timeout_s=parse_positive(_raw(config, "cnn-scenario-timeout"), "cnn-scenario-timeout"),
            official=official,
        )
    except ScenarioError as exc:
        raise pytest.UsageError(str(exc)) from None


def _selected(config: pytest.Config) -> Optional[ScenarioOptions]:
    options = config.stash.get(SETTINGS_KEY, None)
    return options if options is not None and options.scenarios else None


def pytest_cnnbench_check_options(config: pytest.Config) -> list[str]:
    try:
        config.stash[SETTINGS_KEY] = parse(config)
    except pytest.UsageError as exc:
        return [str(exc)]
    return []


def pytest_cnnbench_update_environment(config: pytest.Config, environment: dict[str, Any]) -> None:
    """The run's LoadGen settings among its options, as the result file has always recorded them."""
    options = config.stash.get(SETTINGS_KEY, None)
    if options is not None and isinstance(environment.get("options"), dict):
        environment["options"]["mlperf"] = dataclasses.asdict(options)


def pytest_cnnbench_cell_measured(cell: Any, prepared: Any, result: Any) -> None:
    """The selected scenarios, once the cell is timed (not when timing is off): LoadGen times too, so it
    holds the timing lock, and its time counts in the cell's timing phase."""
    options = _selected(cell.request.config)
    if options is None or result.latency_ms is None:
        return
    from .cell import log_dir, measure

    settings = cell.bench.settings  # the core's: LoadGen's logs go beside the JSON, or in the cache
    folder = log_dir(settings.json_path, settings.cache_dir, cell.spec.id, cell.item.name)
    started = time.perf_counter()
    try:
        with cell.lock.exclusive():
            verdict = measure(options, prepared, cell.inputs.images, cell.inputs.labels, cell.spec.batch_size,
                              result.latency_ms, result, cell.spec.model, folder)
    finally:
        result.phases_s["timing"] = result.phases_s.get("timing", 0.0) + time.perf_counter() - started
    if verdict.skip or verdict.failures:
        cell.item.stash[VERDICT_KEY] = verdict


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A cell LoadGen failed fails, and one it could not run (LoadGen missing) skips, once its test has
    run (its figures are recorded first)."""
    outcome = yield
    verdict = item.stash.get(VERDICT_KEY, None)
    if verdict is not None and verdict.skip:
        pytest.skip(verdict.skip)
    if verdict is not None and verdict.failure:
        pytest.fail(verdict.failure, pytrace=False)
    return outcome


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The scenario table, under the main table."""
    if _selected(config) is None or hasattr(config, "workerinput"):
        return
    from ..plugin import SESSION_KEY
    from .table import format_scenario_table

    session = config.stash.get(SESSION_KEY, None)
    text = format_scenario_table(session.results) if session is not None and session.rows else None
    if text:
        terminalreporter.write_line(text)


@pytest.hookimpl  # marked: ``plugin.report_sections`` also calls it outside pytest (the report command line)
def pytest_cnnbench_report_sections(config: Optional[pytest.Config], results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The scenario table on the HTML page, where any cell ran scenarios."""
    from ..page import notes_list
    from .table import format_scenario_table

    text = format_scenario_table(list(results), tablefmt="html")
    if not text:
        return []
    note, _, body = text.partition("<table>")
    return [(SECTION_TITLE, notes_list(note.strip().splitlines()) + '<div class="scroll"><table>' + body + "</div>")]
