"""The reporting side: gathers cell results from test reports, writes result files, prints the table.

Results arrive through ``report.user_properties`` (identity first, figures once
measured), so they reach the controlling process under pytest-xdist as well.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import pytest

from . import results as R
from .options import Settings


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
        return text[len("Skipped: "):] if text.startswith("Skipped: ") else text
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return crash.message.strip().splitlines()[0]
    lines = [line for line in str(longrepr).splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class CnnBenchSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.rows: dict[str, dict[str, Any]] = {}  # nodeid -> result, in first-seen order
        self.is_worker = hasattr(config, "workerinput")
        self._environment: Optional[dict[str, Any]] = None

    # -- collecting -----------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict((k, v) for k, v in report.user_properties if k in (R.CELL_PROPERTY, R.RESULT_PROPERTY))
        if R.CELL_PROPERTY not in props:
            return
        row = self.rows.get(report.nodeid)
        if row is None:
            row = self.rows[report.nodeid] = R.empty_result(props[R.CELL_PROPERTY])
            row["test"] = report.nodeid
        if R.RESULT_PROPERTY in props:
            row.update({k: v for k, v in props[R.RESULT_PROPERTY].items() if k not in ("status", "reason")})
        self._update_status(row, report)
        if report.when == "teardown" and not self.is_worker:
            self.config.hook.pytest_cnnbench_result(config=self.config, result=row)
            if self.settings.json_path is not None:
                self.write_json(self.settings.json_path)  # after every cell: a crash keeps what finished

    @staticmethod
    def _update_status(row: dict[str, Any], report: pytest.TestReport) -> None:
        """Status from the phases: a call that passed, the first failure, or a skip with its reason."""
        if report.failed:
            if row["status"] in ("failed", "error"):
                return  # keep the first failure's reason
            measured = row.get("latency_ms") is not None or row.get("top1") is not None
            row["status"] = "failed" if report.when == "call" and measured else "error"
            row["reason"] = _reason(report)
        elif report.skipped:
            if row["status"] is None or report.when == "call":
                row["status"], row["reason"] = "skipped", _reason(report)
        elif report.when == "call":
            row["status"], row["reason"] = "passed", None

    # -- reporting --------------------------------------------------------------------
    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    def environment(self) -> dict[str, Any]:
        if self._environment is None or len(self._environment.get("devices", [])) == 0:
            self._environment = self.config.hook.pytest_cnnbench_environment(config=self.config, results=self.results)
        return self._environment

    def options(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.settings).items()}

    def write_json(self, path: Path) -> None:
        R.write_json(path, self.results, self.environment())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        for row in self.rows.values():
            if row["status"] is None:  # set up, never reported back: the run stopped inside it
                row["status"], row["reason"] = "error", "did not finish (run interrupted)"
        if self.settings.json_path is None:
            return
        if self.rows or not self.settings.json_path.exists():
            self._environment = None  # refresh with every device seen
            self.write_json(self.settings.json_path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.rows:
            return
        from .table import format_environment

        tr = terminalreporter
        tr.write_sep("=", "cnnbench results")
        tr.write_line(format_environment(self.environment()))
        tr.write_line(self.config.hook.pytest_cnnbench_format_table(config=self.config, results=self.results))
        if self.settings.json_path is not None:
            tr.write_line(f"cnnbench: results written to {self.settings.json_path}")
