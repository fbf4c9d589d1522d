"""Step 8, publishing: the row's JSON form into the test's ``user_properties`` (which survive xdist and
reach the table and the result files) and pytest-benchmark's ``extra_info``; --cnn-strict's failure
for a cell whose timing stayed disturbed."""

from __future__ import annotations

from typing import Any

import pytest

from .. import results as R


def publish(item: pytest.Item, result: R.CellResult, benchmark: Any) -> None:
    """The result's JSON form into ``item.user_properties`` (replacing an earlier one: notes and checks
    come after ``run``), and into pytest-benchmark's extra_info where it times."""
    row = result.as_dict()
    props = item.user_properties
    props[:] = [p for p in props if p[0] != R.RESULT_PROPERTY]
    props.append((R.RESULT_PROPERTY, row))
    if row["latency_ms"] is not None and benchmark is not None and not getattr(benchmark, "disabled", True):
        benchmark.extra_info["cnnbench"] = {k: v for k, v in row.items() if k != "test"}


def fail_if_disturbed(result: R.CellResult, strict: bool) -> None:
    """--cnn-strict: a cell whose timing stayed disturbed after measuring again fails (its row recorded)."""
    stats = result.latency_ms
    if stats is not None and stats.stable is False and strict:
        from ..machine import disturbed_message

        pytest.fail(f"disturbed timing: {disturbed_message(result.as_dict())} (--cnn-strict)", pytrace=False)
