"""The HTML results: the standalone page (--cnn-report x.html and the report command), opened in a real
headless Chromium, and the cnnbench table in pytest-html's report.

The page's input is a saved result file of a real run (tests/data/lenet_results.json: LeNet on the
10,000 MNIST test images, eager, TorchScript and ONNX Runtime, from
``pytest suites/test_lenet_mnist.py --cnn-model=lenet --cnn-backend=eager,torchscript,ort --cnn-json=...``),
so these tests cost a browser start, not a benchmark.
"""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser import INSTALL, Browser, chromium_path
from conftest import FAST, REPO

SAVED = REPO / "tests" / "data" / "lenet_results.json"


def write_page(tmp_path: Path, source: Path = SAVED) -> Path:
    """The page as users build it from saved results: ``python -m pytest_cnnbench.report``."""
    out = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-m", "pytest_cnnbench.report", str(source), "--report", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"report written to {out}" in done.stdout
    return out


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip(f"no chromium here; install it with: {INSTALL}")
    pytest.importorskip("websocket", reason="websocket-client drives chromium: pip install 'pytest-cnnbench[test]'")
    driver = Browser(executable)
    yield driver
    driver.close()


def page_problems(browser: Browser, path: Path, results: list[dict]) -> list[str]:
    """What a reader would find wrong with the page: errors, requests, rows, sorting, charts."""
    load = browser.open(path)
    problems = [f"console error: {e}" for e in load.errors]
    problems += [f"request to {url}" for url in load.requests if url != path.resolve().as_uri()]
    rows = browser.evaluate("document.querySelectorAll('#cnn-table tbody tr').length")
    if rows != len(results):
        problems.append(f"{rows} table rows for {len(results)} cells in the JSON")
    header = browser.evaluate("Array.from(document.querySelectorAll('#cnn-table thead th')).map(h => h.textContent.trim())")
    if "p50 ms" not in header or "backend" not in header:
        return problems + [f"no p50 or backend column: {header}"]
    p50, backend = header.index("p50 ms"), header.index("backend")
    try:
        shown = browser.evaluate(f"""(() => {{ document.querySelectorAll('#cnn-table thead th')[{p50}].querySelector('button').click();
            return Array.from(document.querySelectorAll('#cnn-table tbody tr')).map(
                r => [r.cells[{backend}].textContent.trim(), r.cells[{p50}].textContent.trim()]); }})()""")
    except RuntimeError as exc:  # no sort button: the page's script did not run
        return problems + [f"cannot sort by p50: {exc}"]
    measured = sorted((r for r in results if (r.get("latency_ms") or {}).get("p50") is not None),
                      key=lambda r: r["latency_ms"]["p50"])
    if not shown or shown[0] != [measured[0]["backend"], f"{measured[0]['latency_ms']['p50']:.3f}"]:
        problems.append(f"sorted by p50, the first row is {shown[:1]}, not the fastest cell "
                        f"{measured[0]['backend']} at {measured[0]['latency_ms']['p50']:.3f} ms")
    # The same figures as the JSON: every cell's p50, as the table prints it.
    if sorted(p for _, p in shown) != sorted(f"{r['latency_ms']['p50']:.3f}" for r in measured):
        problems.append(f"p50 cells {shown} are not the JSON's")
    charts = browser.evaluate("document.querySelectorAll('figure.chart svg').length")
    if charts != len({r["model"] for r in measured}):
        problems.append(f"{charts} charts for {len({r['model'] for r in measured})} model(s)")
    return problems


def test_page_loads_clean_with_every_cell_sorted_and_charted(browser, tmp_path):
    results = json.loads(SAVED.read_text())["results"]
    page = write_page(tmp_path)
    assert page_problems(browser, page, results) == []
    shot = browser.screenshot(tmp_path / "page.png")
    print(f"screenshot of the page: {shot}")  # kept under pytest's tmp path, shown with -s or on failure
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.parametrize("damage, expected", [
    ("drop-row", "table rows for"),
    ("script-error", "console error"),
    ("remote-request", "request to"),
    ("sort-broken", "not the fastest cell"),
])
def test_a_broken_page_is_caught(browser, tmp_path, damage, expected):
    """The checks above see a dropped row, a script error, a request to another host, a sort that does nothing."""
    results = json.loads(SAVED.read_text())["results"]
    page = write_page(tmp_path)
    text = page.read_text()
    if damage == "drop-row":
        text = re.sub(r"<tr id=[^>]*>.*?</tr>", "", text, count=1, flags=re.S)
    elif damage == "script-error":
        text = text.replace("<script>", "<script>undefinedFunction();", 1)
    elif damage == "remote-request":  # what a CDN link would do (the page's policy also reports it)
        text = text.replace("</body>", '<img src="https://cdn.example.invalid/x.png"></body>')
    else:
        text = text.replace("sorted.forEach(function (r) { body.appendChild(r); });", "")
    page.write_text(text)
    problems = page_problems(browser, page, results)
    assert any(expected in p for p in problems), problems


def test_filters_narrow_the_table(browser, tmp_path):
    page = write_page(tmp_path)
    browser.open(page)
    names = browser.evaluate("Array.from(document.querySelectorAll('#cnn-filters select')).map(s => s.name)")
    assert names == ["model", "backend", "prec", "bs"]
    visible = browser.evaluate("""(() => { const s = document.querySelector('#cnn-filters select[name=backend]');
        s.value = 'ort'; s.dispatchEvent(new Event('change'));
        return [Array.from(document.querySelectorAll('#cnn-table tbody tr')).filter(r => !r.hidden).length,
                document.getElementById('cnn-shown').textContent]; })()""")
    assert visible == [1, "1 of 3 cells shown"]


def test_page_without_matplotlib_has_the_table_and_says_how_to_get_charts(tmp_path):
    out = tmp_path / "page.html"
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
            "from pytest_cnnbench.report import main\n"
            f"sys.exit(main([{str(SAVED)!r}, '--report', {str(out)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.count("<tr id=") == 3 and "<svg" not in text
    assert "The charts need matplotlib: <code>pip install &#x27;pytest-cnnbench[plot]&#x27;</code>" in text


def test_page_marks_regressions_against_a_baseline():
    from pytest_cnnbench import compare
    from pytest_cnnbench.page import page

    document = json.loads(SAVED.read_text())
    current = document["results"]
    baseline = json.loads(json.dumps(current))
    baseline[2]["latency_ms"]["p50"] = current[2]["latency_ms"]["p50"] / 2  # ort was twice as fast before
    comparison = compare.compare(current, baseline, compare.parse_rules("p50:10%"))
    text = page(current, document["environment"], comparison)
    regressed = re.findall(r'<tr id="([^"]+)" class="regressed">', text)
    assert regressed == ["cnn-suites-test_lenet_mnist.py-test_lenet_mnist-lenet-ort-bs1"]
    assert '<td class="regressed">+100.0%!</td>' in text
    assert "1 regression(s) past the fail rules (p50:10%)" in text and "REGRESSION lenet-ort-bs1: p50 latency" in text


def test_pytest_html_report_gets_the_table_and_row_columns(tiny_project):
    """Under pytest-xdist (results travel in user_properties), with --cnn-report's page written beside it."""
    pytest.importorskip("pytest_html")
    pytest.importorskip("xdist")
    result = tiny_project.runpytest_subprocess("--cnn-backend=eager,ort", "--html=report.html", "-n", "2",
                                               "--self-contained-html", "--cnn-json=r.json", "--cnn-report=page.html",
                                               *FAST)
    assert result.ret == 0, result.stdout.str()
    page = (tiny_project.path / "page.html").read_text()
    assert page.count("<tr id=") == 2 and "default-src 'none'" in page and page.count('<figure class="chart"') == 1
    report = (tiny_project.path / "report.html").read_text()
    rows = json.loads((tiny_project.path / "r.json").read_text())["results"]
    summary = report[report.index('<div class="additional-summary summary">'):report.index('<div class="additional-summary postfix">')]
    assert summary.count("<tr id=") == len(rows) == 2
    assert "<h2>cnnbench results</h2>" in summary and "speedup = eager p50 / p50" in summary
    assert summary.count('<figure class="chart"') == 1  # the tiny model's chart
    head = report[report.index('<thead id="results-table-head">'):]
    assert re.search(r"Test</th>\s*<th class=\"cnnbench\">p50 ms</th>\s*<th class=\"cnnbench\">speedup</th>"
                     r"\s*<th class=\"cnnbench\">top-1</th>\s*<th class=\"cnnbench\">cnnbench status</th>", head), head[:800]
    # Each cell's test row (pytest-html keeps them as JSON in the page): p50 linked to its table row, speedup,
    # top-1, status, as the table has them.
    blob = json.loads(html.unescape(re.search(r'data-jsonblob="([^"]*)"', report).group(1)))
    for r in rows:
        cells = blob["tests"][r["test"]][0]["resultsTableRow"]
        anchor = "cnn-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", r["test"]).strip("-")
        assert cells[2] == (f'<td class="cnnbench"><a href="#{anchor}" title="its row in the cnnbench table">'
                            f'{r["latency_ms"]["p50"]:.3f}</a></td>'), cells
        top1 = f"{100 * r['top1']:.2f}%" + ("*" if r["accuracy_valid"] is False else "")
        assert cells[4:6] == [f'<td class="cnnbench">{top1}</td>', f'<td class="cnnbench">{r["status"]}</td>'], cells
        assert f'<tr id="{anchor}">' in summary
        links = [e for e in blob["tests"][r["test"]][0]["extras"] if e["name"] == "cnnbench result"]
        assert len(links) == 1 and links[0]["format_type"] == "json", blob["tests"][r["test"]][0]["extras"]
        assert f'href="{links[0]["content"]}"' in cells[-1]  # self-contained: the record inline, as data:
        record = json.loads(base64.b64decode(links[0]["content"].split(";base64,", 1)[1]))
        assert record["latency_ms"] == r["latency_ms"] and record["model"] == r["model"]
    speedup = {r["backend"]: blob["tests"][r["test"]][0]["resultsTableRow"][3] for r in rows}  # xdist: any order
    assert speedup["eager"] == '<td class="cnnbench">ref</td>'
    assert re.fullmatch(r'<td class="cnnbench">\d+\.\d\dx ±[\d.]+%</td>', speedup["ort"]), speedup
    # Without pytest-html loaded, the plugin configures as before, and that is no error.
    plain = tiny_project.runpytest_subprocess("--cnn-backend=eager", "-p", "no:html", "--collect-only", "-q")
    assert plain.ret == 0, plain.stdout.str()


def test_summary_has_the_scenario_table_when_scenarios_ran():
    from pytest_cnnbench.page import summary

    document = json.loads(SAVED.read_text())
    plain = summary(document["results"], with_charts=False)
    assert "Deployment scenarios" not in plain
    rows = json.loads(json.dumps(document["results"]))
    rows[2]["scenarios"] = {"single-stream": {"p90_ms": 0.0252, "loadgen": "VALID", "submission_length": False}}
    rows[2]["loadgen"] = {"accuracy": {"top1": rows[2]["top1"], "plugin_top1": rows[2]["top1"], "total": 10000}}
    text = summary(rows, with_charts=False)
    assert "<h2>Deployment scenarios (MLPerf LoadGen)</h2>" in text and "not submission length" in text
    assert "<td>0.025 ms [VALID, short run]</td>" in text and "<th>SingleStream p90" in text


def test_disturbed_cells_are_listed_under_the_table_as_the_note_says():
    from pytest_cnnbench.page import page

    document = json.loads(SAVED.read_text())
    rows = json.loads(json.dumps(document["results"]))
    for r in rows:
        r["latency_ms"]["stable"] = True
    assert "DISTURBED" not in page(rows, document["environment"])
    rows[1]["latency_ms"]["stable"] = False
    text = page(rows, document["environment"])
    assert "1 cell(s) disturbed while timed" in text and "<li>DISTURBED lenet-torchscript-bs1 p50" in text
