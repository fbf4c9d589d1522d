"""pytest-html integration: the comparison in the report users already produce with ``--html``.

A sub-plugin, registered by plugin.py only when pytest-html is loaded (its hooks exist only then):
the summary gets the table, the lines under it, the comparison, the plugins' sections (hookspecs.py) and the charts
(page.py's pieces); each cell's test row gets its p50, speedup, top-1 and status, the p50 linking to
the cell's row in that table, and its whole result record as a JSON link. Figures come from each report's ``user_properties`` (as the table's
do), so they arrive under pytest-xdist too.
"""

from __future__ import annotations

import html
from typing import Any

import pytest

from . import results as R
from . import table

COLUMNS = ("p50 ms", "speedup", "top-1", "cnnbench status")
AT = 2  # after pytest-html's result and test columns


class PytestHtmlExtras:
    def __init__(self, session: Any) -> None:
        self.session = session  # session.CnnBenchSession: the rows, as the terminal table has them

    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells[AT:AT] = [f'<th class="cnnbench">{html.escape(name)}</th>' for name in COLUMNS]

    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        cells[AT:AT] = [f'<td class="cnnbench">{value}</td>' for value in self._row(report)]

    def _row(self, report: pytest.TestReport) -> list[str]:
        props = dict((k, v) for k, v in report.user_properties if k in (R.CELL_PROPERTY, R.RESULT_PROPERTY))
        if R.CELL_PROPERTY not in props:
            return [""] * len(COLUMNS)  # not a cell: the columns stay empty, aligned
        rows = self.session.results
        index = next((i for i, r in enumerate(rows) if r.get("test") == report.nodeid), None)
        if index is None:  # pragma: no cover - the session saw every report before pytest-html renders it
            return [""] * len(COLUMNS)
        text = dict(zip(table.HEADERS, table.rows(rows)[index]))  # the table's own cells
        from .page import anchor

        p50 = html.escape(text["p50 ms"])
        link = f'<a href="#{html.escape(anchor(report.nodeid, index))}" title="its row in the cnnbench table">{p50}</a>'
        return [link if p50 != "-" else p50, html.escape(text["speedup"]), html.escape(text["top-1"]),
                html.escape(text["status"])]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        """The cell's whole result record (the JSON's) as a link in its row's Links column."""
        report = yield
        props = dict((k, v) for k, v in item.user_properties if k == R.RESULT_PROPERTY)
        if report.when == "call" and R.RESULT_PROPERTY in props:
            from pytest_html import extras

            report.extras = [*getattr(report, "extras", []), extras.json(props[R.RESULT_PROPERTY], name="cnnbench result")]
        return report

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        if not self.session.rows:
            return
        from .page import summary as cnnbench_summary
        from .plugin import report_sections

        results = self.session.results
        summary.append(cnnbench_summary(results, self.session.comparison,
                                        sections=report_sections(self.session.config, results)))
