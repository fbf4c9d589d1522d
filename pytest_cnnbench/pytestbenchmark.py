"""pytest-benchmark integration: its ``benchmark`` fixture shows the calls the harness timed.

The harness times every cell with its own loop (``timing``), so timing works where pytest-benchmark
is off (under pytest-xdist); afterwards the cell's calls are handed to the fixture, so
pytest-benchmark's table and ``--benchmark-json`` show what the cell reports.

pytest-benchmark has no public way to record times measured elsewhere: ``hand_to_benchmark`` uses
the fixture's private ``_make_stats`` and ``_mode`` and replaces ``stats.stats``. Checked against
pytest-benchmark 5.0.0-5.2.3 (source) and 5.3.1 (installed); the project requires >= 5.0.
tests/test_timing.py runs it through the real fixture.
"""

from __future__ import annotations

from typing import Any

import pytest

MODE = "cnnbench"  # what the fixture's ``_mode`` says it was used for (any non-empty value marks it used)


def benchmark_disabled(config: pytest.Config) -> bool:
    """The user turned timing off (--benchmark-disable); pytest-benchmark turning itself off under
    xdist does not count: the harness times with its own timer and hands the figures over."""
    try:
        return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")
    except ValueError:
        return False


def hand_to_benchmark(benchmark: Any, seconds: list[float]) -> bool:
    """Give pytest-benchmark's fixture the cell's calls, so its table and ``--benchmark-json`` show
    the figures the cell reports (a re-measurement replaces the first attempt's). False where the
    fixture is off (``--benchmark-disable``, pytest-xdist)."""
    if benchmark is None:
        return False
    if getattr(benchmark, "disabled", True):
        # Off under xdist: the harness timed the cell itself; marking the fixture used keeps
        # pytest-benchmark from warning "not used at all" on every cell.
        if hasattr(benchmark, "_mode") and not benchmark._mode:
            benchmark._mode = MODE
        return False
    from pytest_benchmark.stats import Stats

    if getattr(benchmark, "stats", None) is None:
        # Private, but pytest-benchmark's own way to open a record; _mode marks the fixture used.
        benchmark._make_stats(1)
        benchmark._mode = MODE
    fresh = Stats()
    for value in seconds:
        fresh.update(value)
    benchmark.stats.stats = fresh
    return True
