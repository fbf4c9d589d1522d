"""The reporting side: gathers cell results from test reports, writes result files, prints the table.

Results arrive through ``report.user_properties`` (identity first, figures once
measured), so they reach the controlling process under pytest-xdist as well.
"""

from __future__ import annotations

import dataclasses
import os
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
        # Loaded now, at configure time: --cnn-json may name the same file and rewrite it as cells finish.
        self.baseline: Optional[dict[str, Any]] = None
        if settings.compare_path is not None and not self.is_worker:
            try:
                self.baseline = R.load_json(settings.compare_path)
            except ValueError as exc:
                raise pytest.UsageError(f"--cnn-compare: {exc}") from None
        self.comparison: Any = None  # compare.Comparison, once the session finished
        self.load_at_start: Optional[dict[str, Any]] = None  # machine.Load.as_dict(), sampled before the first cell
        self.written: list[Path] = []  # reports and charts written at the end
        self.output_errors: list[str] = []
        self.partial_json: Optional[Path] = None  # where an interrupted run's cells went instead of the baseline
        # --cnn-json is rewritten after every cell (a crash keeps what finished), except where that would do
        # harm: a special file (a FIFO with no reader blocks; /dev/stdout would print the table n times) and
        # the baseline this run compares with (an interrupted run must leave it intact). Those: once, at the end.
        json_path = settings.json_path
        self.json_is_baseline = json_path is not None and _same_file(json_path, settings.compare_path)
        self.json_at_end = json_path is not None and (self.json_is_baseline or _special(json_path))

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
            row.update({k: v for k, v in props[R.RESULT_PROPERTY].items() if k not in ("status", "reason", "test")})
        self._update_status(row, report)
        if report.when == "teardown" and not self.is_worker:
            self.config.hook.pytest_cnnbench_result(config=self.config, result=row)
            if self.settings.json_path is not None and not self.json_at_end:
                self._output(self.settings.json_path, self.write_json)  # after every cell: a crash keeps what finished

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

    # -- the machine's load before timing starts ------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Sample the machine's load once the cells are known and before any runs; warn when busy."""
        if self.is_worker or self.config.option.collectonly or not session.items:
            return
        if not any("cnn_cell" in getattr(item, "fixturenames", ()) for item in session.items):
            return
        from . import machine

        self.load_at_start = machine.sample().as_dict()
        reasons = machine.busy_reasons(self.load_at_start)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reasons and reporter is not None:
            reporter.write_line(
                f"cnnbench: WARNING: the machine is busy before timing starts ({'; '.join(reasons)}): "
                f"{machine.describe(self.load_at_start)}. Cells timed beside that work are flagged as disturbed; "
                "for figures to report, quiet the machine first.", yellow=True, bold=True)

    # -- reporting --------------------------------------------------------------------
    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    def environment(self) -> dict[str, Any]:
        if self._environment is None or len(self._environment.get("devices", [])) == 0:
            self._environment = self.config.hook.pytest_cnnbench_environment(config=self.config, results=self.results)
            if isinstance(self._environment, dict) and self.load_at_start is not None:
                self._environment.setdefault("load_at_start", self.load_at_start)
        return self._environment

    def options(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {k: plain(v) for k, v in dataclasses.asdict(self.settings).items()}

    def table_changes(self, results: list[dict[str, Any]]) -> Optional[list[Optional[dict[str, Any]]]]:
        """The change columns for ``results`` when they are this session's compared results."""
        if self.comparison is None or self.comparison.rows != results:
            return None
        return self.comparison.table_changes()

    def write_json(self, path: Path) -> None:
        R.write_json(path, self.results, self.environment())

    def _output(self, path: Path, write: Any) -> bool:
        """Write one output; a failure (a full disk, a value JSON cannot hold) is one error line at the end,
        and the run and the other outputs go on."""
        try:
            write(path)
            return True
        except Exception as exc:
            message = f"{path}: {type(exc).__name__}: {exc}"
            if not any(error.startswith(f"{path}: ") for error in self.output_errors):
                self.output_errors.append(message)
            return False

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        for row in self.rows.values():
            if row["status"] is None:  # set up, never reported back: the run stopped inside it
                row["status"], row["reason"] = "error", "did not finish (run interrupted)"
        self._environment = None  # refresh with every device seen
        json_path = self.settings.json_path
        if json_path is not None and (self.rows or not json_path.exists()):
            interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED or any(
                row.get("reason") == "did not finish (run interrupted)" for row in self.rows.values())
            if self.json_is_baseline and interrupted:  # keep the baseline; this run's cells go beside it
                self.partial_json = json_path.with_name(f"{json_path.stem}.partial{json_path.suffix}")
                self._output(self.partial_json, self.write_json)
            else:
                self._output(json_path, self.write_json)
        if self.baseline is not None and self.rows:
            try:
                self._compare(session)
            except Exception as exc:  # a baseline this code cannot compare must not hide the table
                self.output_errors.append(f"--cnn-compare {self.settings.compare_path}: {type(exc).__name__}: {exc}")
        if self.rows or any(not path.exists() for path in self.settings.reports):
            self._write_outputs(session)
        elif self.output_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _compare(self, session: pytest.Session) -> None:
        from . import compare

        self.comparison = compare.compare(
            self.results, self.baseline["results"], self.settings.compare_rules,  # type: ignore[index]
            baseline_label=str(self.settings.compare_path), current_env=self.environment(),
            baseline_env=self.baseline.get("environment"),  # type: ignore[union-attr]
        )
        if self.comparison.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # what pytest returns from main()

    def _write_outputs(self, session: pytest.Session) -> None:
        """--cnn-report files and the --cnn-plot chart; a failure is reported, not raised."""
        from . import report
        from .plugin import report_sections

        outputs: list[tuple[Path, Any]] = [
            (path, lambda p: report.write_reports([p], self.results, self.environment(), self.comparison,
                                                  sections=report_sections(self.config, self.results)))
            for path in self.settings.reports
        ]
        if self.settings.plot_path is not None and self.rows:
            from .plot import plot

            outputs.append((self.settings.plot_path,
                            lambda p: plot(self.results, p, title=report.plot_title(self.environment()))))
        for path, write in outputs:
            if self._output(path, write):  # a report that cannot be written must not hide the results
                self.written.append(path)
        if self.output_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.rows:
            return
        from .table import format_environment

        tr = terminalreporter
        tr.write_sep("=", "cnnbench results")
        tr.write_line(format_environment(self.environment()))
        tr.write_line(self.config.hook.pytest_cnnbench_format_table(config=self.config, results=self.results))
        json_failed = any(e.startswith(f"{self.settings.json_path}: ") for e in self.output_errors)
        if self.partial_json is not None and not any(e.startswith(f"{self.partial_json}: ") for e in self.output_errors):
            tr.write_line(f"cnnbench: run interrupted: {self.settings.json_path} (the --cnn-compare baseline) is left "
                          f"as it was; this run's cells are in {self.partial_json}", yellow=True)
        elif self.settings.json_path is not None and not json_failed:
            tr.write_line(f"cnnbench: results written to {self.settings.json_path}")
        if self.written:
            tr.write_line("cnnbench: written " + ", ".join(map(str, self.written)))
        for error in self.output_errors:
            tr.write_line(f"cnnbench: ERROR writing {error}", red=True, bold=True)
        if self.comparison is not None:
            self._summarize_comparison(tr)
        self._summarize_unstable(tr)
        if self.settings.profile:
            from .table import format_profile

            tr.write_line(format_profile(self.results))

    def _summarize_unstable(self, tr: Any) -> None:
        from .machine import disturbed_message

        disturbed = [r for r in self.results if (r.get("latency_ms") or {}).get("stable") is False]
        if not disturbed:
            return
        tr.write_sep("-", f"cnnbench: {len(disturbed)} cell(s) disturbed while timed (? in the table)", yellow=True, bold=True)
        for r in disturbed:
            tr.write_line(f"DISTURBED {disturbed_message(r)}", yellow=True)
        tr.write_line("cnnbench: their p50s may be off by more than the table shows; rerun them on a quiet machine "
                      "(docs/measurement.md), or run with --cnn-strict to fail them")

    def _summarize_comparison(self, tr: Any) -> None:
        comparison = self.comparison
        for note in comparison.notes():
            tr.write_line(f"cnnbench: {note}", yellow=note.startswith("WARNING"))
        if not comparison.rules:
            return
        rules = ", ".join(rule.text for rule in comparison.rules)
        for line in comparison.rule_lines():
            tr.write_line(f"cnnbench: {line}")
        if comparison.violations:
            cells = len({id(v.row) for v in comparison.violations})
            tr.write_sep("-", f"cnnbench: {cells} cell(s) regressed past --cnn-compare-fail={rules}", red=True, bold=True)
            for violation in comparison.violations:
                tr.write_line(f"REGRESSION {violation.message}", red=True)
        failures = comparison.gate_failures()
        if failures:
            tr.write_sep("-", f"cnnbench: --cnn-compare-fail={rules} fails: it could not check what it was asked to",
                         red=True, bold=True)
            for failure in failures:
                tr.write_line(f"UNCHECKED {failure}", red=True)
        if not comparison.failed:
            tr.write_line(f"cnnbench: every matching cell is within --cnn-compare-fail={rules}", green=True)


def _same_file(path: Path, other: Optional[Path]) -> bool:
    if other is None:
        return False
    try:
        return os.path.samefile(path, other)
    except OSError:
        return os.path.realpath(path) == os.path.realpath(other)


def _special(path: Path) -> bool:
    from .cache import is_special_file

    return is_special_file(path)
