"""The runner's side: run the selected scenarios on a measured cell, then fail or skip it.

Two calls from ``runner.CellRunner.run``: ``run_for_cell`` after the cell's timing, while its
prepared backend is open, and ``finish_cell`` once the result is recorded (so a failed or skipped
cell keeps its figures in the table and the JSON).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional


def log_dir(settings: Any, cell_id: str, test: str = "") -> Path:
    """Where a cell's LoadGen logs go: beside the JSON (``<json stem>-loadgen/<cell>/``), or else
    under the cache folder (``loadgen/<cell>/``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test}-{cell_id}" if test else cell_id).strip("_") or "cell"
    if settings.json_path is not None:
        return Path(settings.json_path).parent / f"{Path(settings.json_path).stem}-loadgen" / name
    return Path(settings.cache_dir) / "loadgen" / name


def run_for_cell(settings: Any, spec: Any, prepared: Any, images: Any, labels: Any, stats: Any,
                 result: dict[str, Any], test: str = "") -> Optional[dict[str, Any]]:
    """Run --cnn-scenario's scenarios on the cell and record them in ``result`` (``scenarios``,
    ``loadgen``); None when no scenario is selected or the cell was not timed."""
    options = getattr(settings, "mlperf", None)
    if options is None or not options.scenarios or stats is None:
        return None
    from .run import record_into, run_scenarios

    # The stated spread less the session's pace: LoadGen runs right after, at the same pace.
    spread = math.hypot(stats.ci95_within or 0.0, stats.ci95_sessions or 0.0) if stats.ci95_within is not None else stats.ci95_rel
    hints = {"p50_s": stats.p50 / 1000.0, "p90_s": stats.p90 / 1000.0, "spread": spread, "model": spec.model,
             "top1": result.get("top1") if labels is not None else None}
    record = run_scenarios(prepared.run, images, labels, spec.batch_size, options.scenarios, options,
                           log_dir(settings, spec.id, test), hints)
    record_into(result, record)
    return record


def finish_cell(record: Optional[dict[str, Any]]) -> None:
    """Fail the cell with every scenario failure, or skip it when LoadGen is not installed."""
    if not record:
        return
    import pytest

    if record.get("skip"):
        pytest.skip(record["skip"])
    if record.get("failures"):
        pytest.fail("LoadGen: " + "; ".join(record["failures"]), pytrace=False)
