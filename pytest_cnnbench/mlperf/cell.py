"""The cell's side: run the selected scenarios on a measured cell and say how it ends.

``plugin.py`` calls ``measure`` from ``pytest_cnnbench_cell_measured``, after the cell's own timing,
while its prepared backend is open; the verdict (skip, or the failures) is applied once the cell's
result is recorded, so a failed or skipped cell keeps its figures in the table and the JSON.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Optional

from .settings import ScenarioHints, ScenarioOptions


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How LoadGen ends a cell: skipped (LoadGen is not installed), failed, or neither."""

    skip: Optional[str] = None
    failures: tuple[str, ...] = ()

    @property
    def failure(self) -> Optional[str]:
        return "LoadGen: " + "; ".join(self.failures) if self.failures else None


def log_dir(json_path: Optional[Path], cache_dir: Path, cell_id: str, test: str = "") -> Path:
    """Where a cell's LoadGen logs go: beside the JSON (``<json stem>-loadgen/<cell>/``), or else
    under the cache folder (``loadgen/<cell>/``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test}-{cell_id}" if test else cell_id).strip("_") or "cell"
    if json_path is not None:
        return Path(json_path).parent / f"{Path(json_path).stem}-loadgen" / name
    return Path(cache_dir) / "loadgen" / name


def hints_for(stats: Any, model: str, top1: Optional[float]) -> ScenarioHints:
    """What LoadGen takes from the cell's timing (``stats``, a ``LatencyStats``)."""
    # The stated spread less the session's pace: LoadGen runs right after, at the same pace.
    spread = (math.hypot(stats.ci95_within or 0.0, stats.ci95_sessions or 0.0) if stats.ci95_within is not None
              else stats.ci95_rel)
    return ScenarioHints(p50_s=stats.p50 / 1000.0, p90_s=stats.p90 / 1000.0, spread=spread, model=model, top1=top1)


def measure(options: ScenarioOptions, prepared: Any, images: Any, labels: Any, batch_size: int, stats: Any,
            result: Any, model: str, folder: Path) -> Verdict:
    """Run ``options.scenarios`` on the cell and record them in ``result`` (``scenarios``, ``loadgen``)."""
    from .run import record_into, run_scenarios

    hints = hints_for(stats, model, result.get("top1") if labels is not None else None)
    record = run_scenarios(prepared.run, images, labels, batch_size, options.scenarios, options, folder, hints)
    record_into(result, record)
    return Verdict(skip=record.get("skip"), failures=tuple(record.get("failures") or ()))
