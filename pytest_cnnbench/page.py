"""The results as HTML: a standalone page in one file (``--cnn-report PATH.html``, and
``python -m pytest_cnnbench.report --report PATH.html`` from saved result files), and the pieces
pytest-html's report gets (pytesthtml.py).

Pure formatting, no pytest. Every figure is the comparison table's own text (``table.table_body``)
and every chart is plot.py's, drawn as inline SVG, from the same result records as the JSON: nothing
is recomputed here. The page works offline: no stylesheet, script, font or image comes from
anywhere but the file itself.
"""

from __future__ import annotations

import html
import re
from typing import Any, Optional, Sequence

from . import table

TITLE = "pytest-cnnbench results"
PLOT_HINT = "pip install 'pytest-cnnbench[plot]'"
FILTER_COLUMNS = ("model", "backend", "prec", "bs")  # table headers the page filters by

# The page's own look; pytest-html's report keeps its own (STYLE is scoped to .cnnbench).
PAGE_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
"""
STYLE = """
.cnnbench table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:.4em 0}
.cnnbench th,.cnnbench td{border:1px solid #d8d8d8;padding:3px 7px;text-align:left;white-space:nowrap}
.cnnbench thead th{background:#f2f2f4;position:sticky;top:0}
.cnnbench th button{all:unset;cursor:pointer}.cnnbench th button:after{content:" \\2195";color:#aaa}
.cnnbench th[aria-sort=ascending] button:after{content:" \\2191";color:#000}
.cnnbench th[aria-sort=descending] button:after{content:" \\2193";color:#000}
.cnnbench tbody tr:nth-child(even){background:#fafafa}.cnnbench tr:target{outline:2px solid #4a7fd0}
.cnnbench tr.regressed{background:#fdecea}.cnnbench td.regressed{color:#b00020;font-weight:600}
.cnnbench .scroll{overflow-x:auto}.cnnbench .notes{color:#444;margin:.3em 0}.cnnbench .notes li{margin:.1em 0}
.cnnbench .filters{display:flex;gap:1em;flex-wrap:wrap;align-items:center;margin:.5em 0}
.cnnbench .chart svg{max-width:100%;height:auto}.cnnbench .hint{background:#fff8e1;padding:.5em .8em;border-left:3px solid #f0b400}
.cnnbench .violations li{color:#b00020}.cnnbench code{background:#f2f2f4;padding:0 .2em}
"""

# Sort by a column (numbers by their leading figure, "-" last) and filter by model, backend,
# precision and batch size. Plain JS: the page fetches nothing.
SCRIPT = """
(function () {
  var table = document.querySelector("#cnn-table table");
  if (!table) return;
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var shown = document.getElementById("cnn-shown");
  function text(row, i) { return row.cells[i].textContent.trim(); }
  function sortBy(i, ascending) {
    var numeric = rows.some(function (r) { return !isNaN(parseFloat(text(r, i))); });
    var sorted = rows.slice().sort(function (a, b) {
      var x = text(a, i), y = text(b, i), d;
      if (numeric) {
        var p = parseFloat(x), q = parseFloat(y);
        if (isNaN(p) || isNaN(q)) return isNaN(p) - isNaN(q);  // "-" last either way
        d = p - q;
      } else { d = x.localeCompare(y); }
      return ascending ? d : -d;
    });
    sorted.forEach(function (r) { body.appendChild(r); });
    heads.forEach(function (h, j) { h.setAttribute("aria-sort", j === i ? (ascending ? "ascending" : "descending") : "none"); });
  }
  heads.forEach(function (h, i) {
    var label = h.textContent.trim();
    var button = document.createElement("button");
    button.textContent = label;
    button.title = "sort by " + label;
    h.textContent = "";
    h.appendChild(button);
    h.setAttribute("aria-sort", "none");
    h.dataset.column = label;
    button.addEventListener("click", function () { sortBy(i, h.getAttribute("aria-sort") !== "ascending"); });
  });
  var filters = document.getElementById("cnn-filters");
  var selects = [];
  heads.forEach(function (h, i) {
    if (filters.dataset.columns.split(",").indexOf(h.dataset.column) < 0) return;
    var values = [];
    rows.forEach(function (r) { var v = text(r, i); if (values.indexOf(v) < 0) values.push(v); });
    var label = document.createElement("label");
    var select = document.createElement("select");
    select.name = h.dataset.column;
    select.add(new Option("all", ""));
    values.forEach(function (v) { select.add(new Option(v, v)); });
    label.appendChild(document.createTextNode(h.dataset.column + " "));
    label.appendChild(select);
    filters.insertBefore(label, shown);
    selects.push([i, select]);
    select.addEventListener("change", apply);
  });
  function apply() {
    var count = 0;
    rows.forEach(function (r) {
      var keep = selects.every(function (s) { return !s[1].value || text(r, s[0]) === s[1].value; });
      r.hidden = !keep;
      count += keep ? 1 : 0;
    });
    shown.textContent = count + " of " + rows.length + " cells shown";
  }
  apply();
})();
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def anchor(test: Optional[str], index: int) -> str:
    """The id of a cell's row in the table: from its test's node id (unique in a run), else its position."""
    if not test:
        return f"cnn-cell-{index}"
    return "cnn-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", test).strip("-")


def _lines(lines: Sequence[str], css: str = "notes") -> str:
    if not lines:
        return ""
    return f'<ul class="{css}">' + "".join(f"<li>{_esc(line)}</li>" for line in lines) + "</ul>"


def results_table(results: Sequence[dict[str, Any]], changes: Optional[list[Optional[dict[str, Any]]]] = None) -> str:
    """The comparison table as an HTML table, cell for cell the terminal's (``table.table_body``); each row
    has an id (``anchor``) and, with a baseline, rows and change cells past a fail rule are marked."""
    results = list(results)
    if not results:
        return "<p>No cells ran.</p>"
    text = re.sub(r"\s+</t([hd])>", r"</t\1>", table.table_body(results, "html", changes))  # tabulate pads cells
    head, _, rest = text.partition("<tbody>")
    rows = rest.split("<tr>")[1:]  # tabulate's html: one "<tr>" per result, in order
    out = []
    for i, (row, r) in enumerate(zip(rows, results)):
        entry = changes[i] if changes is not None and i < len(changes) else None
        regressed = bool(entry and entry.get("broken"))
        if regressed:  # the change cells tabulate wrote with the table's mark
            row = re.sub(r"<td>([^<]*\d(?:%|pp))" + re.escape(table.BROKEN_MARK) + "</td>",
                         lambda m: f'<td class="regressed">{m.group(1)}{table.BROKEN_MARK}</td>', row)
        css = ' class="regressed"' if regressed else ""
        out.append(f'<tr id="{_esc(anchor(r.get("test"), i))}"{css}>' + row)
    return head + "<tbody>" + "".join(out)


def under_table(results: Sequence[dict[str, Any]]) -> str:
    """The lines under the table (table.py's), then, as the terminal lists them, the cells disturbed while timed."""
    results = list(results)
    if not results:
        return ""
    out = _lines(table.lines_under_table(results))
    disturbed = [r for r in results if (r.get("latency_ms") or {}).get("stable") is False]
    if disturbed:
        from .machine import disturbed_message

        out += (f"<p>{len(disturbed)} cell(s) disturbed while timed ({table.UNSTABLE_MARK} in the table); their p50s "
                "may be off by more than the table shows:</p>"
                + _lines([f"DISTURBED {disturbed_message(r)}" for r in disturbed]))
    return out


def notes_list(lines: Sequence[str]) -> str:
    """Lines as the page's list of notes, for the sections plugins add (``extra_sections``)."""
    return _lines(lines)


def extra_sections(results: Sequence[dict[str, Any]], sections: Optional[Sequence[tuple[str, str]]] = None) -> str:
    """The ``(title, html)`` sections plugins add under the table (``pytest_cnnbench_report_sections``),
    e.g. the LoadGen scenario table; None: ask the bundled sub-plugins (no pytest run at hand)."""
    if sections is None:
        from .plugin import report_sections

        sections = report_sections(None, results)
    return "".join(f"<h2>{_esc(title)}</h2>{body}" for title, body in sections)


def comparison_section(comparison: Any) -> str:
    """The baseline comparison's notes and the regressions past the fail rules."""
    if comparison is None:
        return ""
    out = ["<h2>Comparison with the baseline</h2>", _lines(comparison.notes())]
    if comparison.rules:
        rules = ", ".join(rule.text for rule in comparison.rules)
        if comparison.violations:
            out.append(f"<p><strong>{len(comparison.violations)} regression(s) past the fail rules "
                       f"({_esc(rules)}), marked in the table:</strong></p>")
            out.append(_lines([f"REGRESSION {v.message}" for v in comparison.violations], "violations"))
        else:
            out.append(f"<p>Every matching cell is within the fail rules ({_esc(rules)}).</p>")
    return "".join(out)


def charts(results: Sequence[dict[str, Any]]) -> str:
    """One chart per model (plot.py's: latency bars with p90, p99 and the p50's 95% interval; accuracy
    against latency), as inline SVG; without matplotlib, a line saying how to get them."""
    from .plot import _measured, svg_text

    rows = _measured(results)
    if not rows:
        return "<p>No measured cells to chart (all skipped or failed).</p>"
    out = []
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        try:
            svg = svg_text([r for r in results if r.get("model") == model], title=model, salt=f"cnnbench-{i}")
        except ImportError as exc:  # no matplotlib (or a broken one): the table still stands
            return (f'<p class="hint" id="cnn-no-charts">The charts need matplotlib: <code>{_esc(PLOT_HINT)}</code>, '
                    f"then write this report again ({_esc(exc)}).</p>")
        out.append(f'<figure class="chart" id="cnn-chart-{i}" data-model="{_esc(model)}">{svg}</figure>')
    return "".join(out)


def environment_section(environment: dict[str, Any]) -> str:
    from .report import CODE, environment_lines

    items = []
    for line in environment_lines(environment):
        parts = _esc(line.strip()).split(CODE)
        items.append("<li>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + "</li>")
    return "<h2>Environment</h2><ul>" + "".join(items) + "</ul>"


def summary(results: Sequence[dict[str, Any]], comparison: Any = None, with_charts: bool = True,
            sections: Optional[Sequence[tuple[str, str]]] = None) -> str:
    """What pytest-html's summary gets: the table, the lines under it, the comparison, the plugins'
    sections (``extra_sections``: the scenario table) and the charts, in one ``<div class="cnnbench">``
    (static: pytest-html has its own script)."""
    results = list(results)
    changes = comparison.table_changes() if comparison is not None else None
    parts = ['<div class="cnnbench"><style>', STYLE, "</style><h2>cnnbench results</h2>",
             '<div class="scroll" id="cnn-table">', results_table(results, changes), "</div>",
             under_table(results),
             comparison_section(comparison), extra_sections(results, sections)]
    if with_charts:
        parts += ["<h2>Latency and accuracy by model</h2>", charts(results)]
    return "".join(parts) + "</div>"


def page(results: Sequence[dict[str, Any]], environment: dict[str, Any], comparison: Any = None,
         title: str = TITLE, sections: Optional[Sequence[tuple[str, str]]] = None) -> str:
    """The standalone page: everything inline, sortable and filterable table, charts, environment;
    ``sections`` as ``extra_sections`` takes them."""
    from .report import machine, MERGED

    results = list(results)
    changes = comparison.table_changes() if comparison is not None else None
    where = ", ".join(e["source"] for e in environment[MERGED]) if MERGED in environment else machine(environment)
    when = environment.get("timestamp")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        # No request to any host: the policy forbids every source but what is inline in this file.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<title>{_esc(title)}</title><style>{PAGE_STYLE}{STYLE}</style></head>",
        '<body class="cnnbench">', f"<h1>{_esc(title)}</h1>",
        f"<p>{len(results)} cell(s) on {_esc(where)}" + (f", finished {_esc(when)}" if when else "") + ".</p>",
        "<h2>Comparison table</h2>",
        f'<div class="filters" id="cnn-filters" data-columns="{",".join(FILTER_COLUMNS)}">'
        '<span id="cnn-shown"></span></div>',
        '<div class="scroll" id="cnn-table">', results_table(results, changes), "</div>",
        under_table(results),
        comparison_section(comparison), extra_sections(results, sections),
        "<h2>Latency and accuracy by model</h2>",
        "<p>Per model, left: p50 latency per batch by backend (bar, with its 95% interval), p90 (black tick) and "
        "p99 (red triangle); right: top-1 accuracy against p50 latency, one point per cell.</p>",
        charts(results), environment_section(environment),
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
