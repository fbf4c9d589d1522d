"""Reports, charts, baselines with fail rules, merged runs, and pytest-benchmark's own saving/comparing.

Runs of the plugin go through ``pytester.runpytest_subprocess`` with a tiny model registered
in the temporary project's conftest (synthetic data, random weights: nothing trains or
downloads). Formatting, comparison rules, the chart and the merge CLI are also tested
directly on hand-made result dicts.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_cnnbench import compare, report
from pytest_cnnbench import results as R

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY_CONFTEST = '''
from pytest_cnnbench import register_model


@register_model("tiny", dataset="synthetic", input_shape=(3, 16, 16), num_classes=10)
def tiny(ctx):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)
    )
'''
TINY_SUITE = '''
def test_bench(cnnbench):
    result = cnnbench.run()
    assert result["latency_ms"] is None or result["latency_ms"]["p50"] > 0
'''
FAST = ["--cnn-warmup=2", "--cnn-min-rounds=5", "--cnn-max-time=0.05", "-p", "no:cacheprovider"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for the module's runs (TorchScript/ONNX exports are built once)."""
    return tmp_path_factory.mktemp("cnnbench-cache")


@pytest.fixture
def project(pytester: pytest.Pytester, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(TINY_CONFTEST)
    pytester.makepyfile(test_suite=TINY_SUITE)
    pytester.makeini("[pytest]\ncnn_model = tiny\ncnn_backend = eager,torchscript\n")
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(cache_dir))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*FAST, *args)


def p50s(results: list[dict[str, Any]]) -> dict[str, float]:
    return {r["backend"]: r["latency_ms"]["p50"] for r in results}


# -- hand-made results --------------------------------------------------------------------
def cell(model: str = "net", backend: str = "eager", p50: float = 2.0, top1: float = 0.9, batch_size: int = 1,
         device: str = "cpu", precision: str = "fp32", dataset: str = "imagenet", **extra: Any) -> dict[str, Any]:
    row = R.empty_result({"model": model, "backend": backend, "batch_size": batch_size, "device": device,
                          "precision": precision, "dataset": dataset})
    row.update(
        samples=1000, top1=top1, top5=None if top1 is None else min(1.0, top1 + 0.05), accuracy_valid=True, weights="pretrained",
        latency_ms={"mean": p50 * 1.05, "p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.5, "min": p50 * 0.9,
                    "max": p50 * 2, "stdev": p50 * 0.1, "rounds": 100, "ci95_rel": 0.01},
        throughput_ips=batch_size * 1000.0 / p50, status="passed", test=f"test_x[{model}-{backend}-bs{batch_size}]",
        device_name="cpu: Test CPU",
    )
    row.update(extra)
    return row


ENV = {"versions": {"python": "3.11.0", "torch": "2.5.0", "onnxruntime": "1.20.0"}, "cpu": "Test CPU",
       "cpu_count": 8, "os": "TestOS 1", "devices": ["cpu: Test CPU"], "git_commit": "abc123", "argv": ["suites"],
       "options": {"backends": ["eager", "ort"]}}


def write_doc(path: Path, results: list[dict[str, Any]], env: dict[str, Any] = ENV) -> Path:
    R.write_json(path, results, env)
    return path


# -- compare rules ------------------------------------------------------------------------
def test_rules_parse_with_units_per_metric():
    rules = compare.parse_rules("p50:10%, p99:20,throughput:5%,top1:0.5,top5:1pp")
    assert [(r.metric, r.threshold) for r in rules] == [("p50", 10), ("p99", 20), ("throughput", 5), ("top1", 0.5), ("top5", 1)]
    assert [r.text for r in rules] == ["p50:10%", "p99:20%", "throughput:5%", "top1:0.5pp", "top5:1pp"]


@pytest.mark.parametrize("text, expected", [
    ("p51:10%", ["'p51'", "valid metrics: p50, p90, p99, mean, throughput, top1, top5"]),
    ("latency:10%", ["'latency'", "valid metrics"]),
    ("p50", ["give a threshold"]),
    ("p50:fast", ["'fast' is not a non-negative number"]),
    ("p50:-5%", ["'-5%' is not a non-negative number"]),
    ("top1:0.5%", ["percentage points", "top1:0.5"]),
    ("p50:10%,p50:20%", ["given twice"]),
    (" , ", ["no rules"]),
])
def test_bad_rules_name_the_rule_and_the_valid_metrics(text, expected):
    with pytest.raises(compare.RuleError) as info:
        compare.parse_rules(text)
    for part in expected:
        assert part in str(info.value)


def test_regression_direction_per_metric():
    base = [cell(backend="eager", p50=10.0, top1=0.90), cell(backend="ort", p50=10.0, top1=0.90)]
    now = [cell(backend="eager", p50=12.0, top1=0.90), cell(backend="ort", p50=5.0, top1=0.891)]
    rules = compare.parse_rules("p50:10%,throughput:10%,top1:0.5")
    result = compare.compare(now, base, rules)
    eager, ort = result.cells
    assert eager.changes["p50"] == pytest.approx(20.0) and eager.changes["throughput"] == pytest.approx(-100 / 6)
    assert set(eager.broken) == {"p50", "throughput"}  # slower and fewer images per second
    assert ort.changes["p50"] == pytest.approx(-50.0) and ort.changes["top1"] == pytest.approx(-0.9)
    assert ort.broken == ("top1",)  # faster is fine; 0.9 pp less top-1 is not
    messages = [v.message for v in result.violations]
    assert any(m.startswith("net-eager-bs1: p50 latency 12 ms vs 10 ms") and "+20.0%" in m for m in messages)
    assert any(m.startswith("net-ort-bs1: top-1 89.10% vs 90.00%") and "-0.90pp" in m for m in messages)
    # Within the thresholds: nothing breaks.
    assert not compare.compare(now, base, compare.parse_rules("p50:25%,throughput:20%,top1:1")).violations


def test_matching_by_cell_and_cells_missing_on_either_side():
    base = [cell(backend="eager"), cell(backend="ort"), cell(backend="eager", batch_size=8)]
    now = [cell(backend="eager", p50=4.0), cell(backend="ort", precision="fp16"), cell(backend="eager", batch_size=8, device="cuda")]
    result = compare.compare(now, base, compare.parse_rules("p50:10%"))
    assert result.matched == 1 and result.cells[0].changes["p50"] == pytest.approx(100.0)
    assert [compare.cell_label(r) for r in result.only_current] == ["net-ort-bs1-fp16", "net-eager-bs8-cuda"]
    assert [compare.cell_label(r) for r in result.only_baseline] == ["net-ort-bs1", "net-eager-bs8"]
    notes = "\n".join(result.notes())
    assert "cells not in the baseline: net-ort-bs1-fp16; net-eager-bs8-cuda" in notes
    assert "baseline cells not in this run: net-ort-bs1; net-eager-bs8" in notes


def test_accuracy_not_compared_across_datasets_or_without_meaning():
    base = [cell(backend="eager", top1=0.9), cell(backend="ort", top1=0.9)]
    now = [cell(backend="eager", top1=0.1, dataset="synthetic"), cell(backend="ort", top1=0.1, accuracy_valid=False)]
    result = compare.compare(now, base, compare.parse_rules("top1:0.5"))
    assert not result.violations and all(c.changes["top1"] is None for c in result.cells)
    assert "accuracy not compared" in "\n".join(result.notes())


def test_environment_differences_say_what_differs():
    other = copy.deepcopy(ENV)
    other.update(cpu="Other CPU", cpu_count=2, gpus=["NVIDIA H100"], gpu_driver="550.1")
    other["versions"]["torch"] = "2.6.0"
    other["env_vars"] = {"OMP_NUM_THREADS": "1"}
    diffs = compare.environment_differences(ENV, other)
    assert "CPU model: Test CPU in the baseline, Other CPU now" in diffs
    assert "CPU cores: 8 in the baseline, 2 now" in diffs
    assert "GPU: none in the baseline, NVIDIA H100 now" in diffs
    assert "torch: 2.5.0 in the baseline, 2.6.0 now" in diffs
    assert "OMP_NUM_THREADS: none in the baseline, 1 now" in diffs
    assert not any(d.startswith(("ONNX Runtime", "GPU driver")) for d in diffs)
    assert compare.environment_differences(ENV, copy.deepcopy(ENV)) == []


# -- writers ------------------------------------------------------------------------------
def test_csv_has_one_row_per_cell_with_every_figure():
    rows = [cell(backend="eager", p50=2.0), cell(backend="ort", p50=0.5), cell(backend="trt", status="skipped", reason="no GPU",
                                                                             latency_ms=None, top1=None, throughput_ips=None)]
    parsed = list(csv.DictReader(io.StringIO(report.csv_text(rows))))
    assert [r["backend"] for r in parsed] == ["eager", "ort", "trt"]
    assert float(parsed[1]["latency_ms_p50"]) == 0.5 and float(parsed[1]["latency_ms_p99"]) == 0.75
    assert float(parsed[0]["throughput_ips"]) == 500.0 and parsed[0]["memory_mb_host_peak"] == ""
    assert parsed[2]["status"] == "skipped" and parsed[2]["reason"] == "no GPU" and parsed[2]["latency_ms_p50"] == ""
    for key in ("top1", "top5", "samples", "prepare_s", "device_name", "test", "accuracy_valid"):
        assert key in parsed[0]


def test_csv_and_markdown_carry_the_comparison():
    base = [cell(backend="eager", p50=1.0), cell(backend="ort", p50=1.0)]
    now = [cell(backend="eager", p50=1.5), cell(backend="trt", p50=1.0)]
    comparison = compare.compare(now, base, compare.parse_rules("p50:10%"), baseline_label="base.json")
    parsed = list(csv.DictReader(io.StringIO(report.csv_text(now, comparison))))
    assert float(parsed[0]["change_p50_pct"]) == pytest.approx(50.0) and parsed[0]["regressions"] == "p50"
    assert parsed[1]["regressions"] == "not in baseline" and parsed[1]["change_p50_pct"] == ""
    md = report.markdown(now, ENV, comparison)
    assert "| p50 chg" in md and "+50.0%!" in md
    assert "## Comparison with the baseline" in md and "baseline cells not in this run: net-ort-bs1" in md
    assert "**1 regression(s) past the fail rules (p50:10%):**" in md


def test_markdown_has_environment_table_and_notes():
    rows = [cell(backend="eager", p50=2.0), cell(backend="ort", p50=0.5, reason="a|b")]
    md = report.markdown(rows, ENV)
    lines = md.splitlines()
    assert lines[0] == "# pytest-cnnbench results"
    assert "- machine: Test CPU (8 cores), no GPU, TestOS 1" in lines
    assert "- software: Python 3.11.0, torch 2.5.0, ONNX Runtime 1.20.0" in lines
    assert "- command: `pytest suites`" in lines
    table_lines = [line for line in lines if line.startswith("|")]
    assert len(table_lines) == 2 + len(rows) and "| p50 ms" in table_lines[0]
    cells_per_line = [len(re.findall(r"(?<!\\)\|", line)) for line in table_lines]
    assert len(set(cells_per_line)) == 1 and "a\\|b" in table_lines[3]  # the "|" of "a|b" is escaped
    assert "| 2.000 " in table_lines[2] and "| 0.500 " in table_lines[3] and "4.00x" in table_lines[3]
    assert lines.index("## Results") < md.splitlines().index(table_lines[0])


# -- the table ----------------------------------------------------------------------------
def test_table_tells_tests_apart_and_speedup_stays_within_a_test():
    from pytest_cnnbench import table

    rows = [cell("net", "eager", p50=4.0, test_name="test_suite"), cell("net", "ort", p50=1.0, test_name="test_suite"),
            cell("net", "ort", p50=2.0, test_name="test_harness"),  # no eager row in its test: no speedup
            cell("net", "ort", p50=0.5, precision="int8", test_name="test_suite")]
    found = table.speedups(rows)
    assert [s and s["value"] for s in found] == [1.0, 4.0, None, 8.0]
    assert [s and s["paired"] for s in found] == [True, False, None, False]  # timed apart: marked, not paired
    text = table.format_table(rows)
    header, _, *lines = text.splitlines()
    assert header.split()[0] == "test" and lines[2].startswith("test_harness")
    assert "8.00x ±1.4%~†" in lines[3] and "† speedup over eager fp32" in text
    assert "ref" in lines[0].split() and "~ speedup from two p50s timed apart" in text
    # One test: no test column.
    assert table.format_table(rows[:2]).split()[0] == "model"


def test_the_table_follows_the_runners_reference_rule_for_bf16_and_precisions_eager_lacks():
    """bf16 and a precision eager has no path for are measured against eager fp32 (reference_rule): the
    unpaired speedup and the note on eager's thread count read eager fp32's row, even beside an eager bf16 row."""
    from pytest_cnnbench import table

    rows = [cell("net", "eager", p50=4.0, threads=2), cell("net", "eager", p50=3.0, precision="bf16", threads=1),
            cell("net", "openvino", p50=1.0, precision="bf16", threads=1,
                 speedup={"value": 3.0, "ci95_rel": 0.02, "paired": True, "reference": "net-eager-bs1", "threads": 1}),
            cell("net", "ort", p50=2.0, precision="int8")]
    speeds = table.speedups(rows)
    assert speeds[0]["reference"] is None  # eager fp32: ref
    assert speeds[1]["value"] == 4.0 / 3.0 and speeds[1]["reference"] == "net-eager-bs1"  # eager bf16: over eager fp32
    assert speeds[3]["value"] == 2.0 and speeds[3]["reference"] == "net-eager-bs1"  # int8 on the CPU: over eager fp32
    notes = "\n".join(table.table_notes(rows))
    assert "net-openvino-bs1-bf16 (eager at 1, its row at 2)" in notes  # eager fp32's row, not eager bf16's


def test_table_shows_the_accuracy_cost_of_reduced_precision():
    from pytest_cnnbench import table
    from pytest_cnnbench.results import AccuracyCost
    from pytest_cnnbench.stats import paired_difference

    rows = [cell("net", "eager", top1=0.90, reference_top1=0.90, reference_top5=0.95),
            cell("net", "ort", precision="int8", top1=0.885, reference_top1=0.90, reference_top5=0.95)]
    rows[1]["accuracy_cost"] = AccuracyCost.from_pairs(paired_difference(880, 5, 20, 95), None, 1.0, True).as_dict()
    text = table.format_table(rows)
    header, _, eager, int8 = text.splitlines()[:4]
    low, high = rows[1]["accuracy_cost"]["ci95_pp"]
    assert "Δtop-1" in header and f"-1.50 [{low:+.2f},{high:+.2f}]" in int8 and "Δtop-1 = top-1 minus" in text
    assert "Δtop-1" not in table.format_table(rows[:1])  # eager fp32 only: no column
    del rows[1]["accuracy_cost"]
    assert "Δtop-1" not in table.format_table(rows)  # no measured cost: nothing recomputed from top-1


def test_table_says_when_accuracy_was_not_asserted():
    from pytest_cnnbench import table

    row = cell("net", "ort", accuracy_valid=False, weights="random", notes=["accuracy not asserted: random weights"])
    line = table.format_table([row]).splitlines()[2]
    assert "passed: accuracy not asserted: random weights" in line and "90.00%*" in line


# -- chart --------------------------------------------------------------------------------
def test_plot_is_a_png_of_the_results(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_cnnbench import plot

    rows = [cell("net", "eager", p50=4.0, top1=0.91), cell("net", "ort", p50=1.0, top1=0.90),
            cell("net", "trt", status="skipped", latency_ms=None, top1=None),
            cell("other", "eager", p50=8.0, top1=0.7, batch_size=1), cell("other", "eager", p50=20.0, top1=0.7, batch_size=8)]
    summary = plot.plot(rows, tmp_path / "a.png", title="run A")
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and 20_000 < len(data) < 2_000_000
    assert (summary.width, summary.height) == plot.png_size(tmp_path / "a.png")
    assert 800 <= summary.width <= 3000 and 400 <= summary.height <= 2000
    assert summary.title == "run A" and len(summary.axes) == 4  # two models x two panels
    net_latency, net_accuracy, other_latency, other_accuracy = summary.axes
    assert net_latency.bars == [4.0, 1.0] and net_latency.xticklabels == ["eager", "ort"]  # the skipped cell has no bar
    assert net_latency.ylabel.startswith("latency per batch (ms") and "net" in net_latency.title
    assert net_accuracy.points == [(4.0, pytest.approx(91.0)), (1.0, pytest.approx(90.0))]
    assert net_accuracy.xlabel.startswith("p50 latency") and net_accuracy.ylabel == "top-1 accuracy (%)"
    assert other_latency.xticklabels == ["eager\nbs1", "eager\nbs8"] and other_latency.bars == [8.0, 20.0]
    assert other_accuracy.legend == ["eager bs1", "eager bs8"]

    # Other results, other picture.
    rows[0]["latency_ms"]["p50"] = 40.0
    summary_b = plot.plot(rows, tmp_path / "b.png", title="run A")
    assert summary_b.axes[0].bars == [40.0, 1.0]
    assert (tmp_path / "b.png").read_bytes() != data


def test_plot_with_nothing_measured_says_so(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_cnnbench import plot

    summary = plot.plot([cell(status="skipped", latency_ms=None)], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_SIGNATURE
    assert any("no measured cells" in text for axes in summary.axes for text in axes.texts)


def test_plot_has_one_bar_per_cell_and_tells_tests_apart(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_cnnbench import plot

    suite = dict(test="suites/test_a.py::test_suite[net-ort-bs1]", test_name="test_suite")
    harness = dict(test="suites/test_h.py::test_harness[net-ort-bs1]", test_name="test_harness")
    rows = [cell("net", "eager", p50=4.0, test_name="test_suite"), cell("net", "ort", p50=1.0, **suite),
            cell("net", "ort", p50=1.5, **suite),  # the same cell measured again by the same test: the last counts
            cell("net", "ort", p50=1.2, **harness)]
    latency = plot.plot(rows, tmp_path / "a.png").axes[0]
    assert latency.bars == [4.0, 1.5, 1.2]
    assert latency.xticklabels == ["eager\ntest_suite", "ort\ntest_suite", "ort\ntest_harness"]


def test_plot_shows_agreement_where_accuracy_means_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_cnnbench import plot

    random = dict(accuracy_valid=False, weights="random")
    rows = [cell("net", "eager", p50=4.0, top1=0.001, **random),
            cell("net", "ort", p50=1.0, top1=0.002, agreement={"top1_agree": 0.97, "rel_err": 1e-6, "meaningful": True}, **random),
            cell("net", "ort", p50=0.5, top1=0.001, precision="int8",
                 agreement={"top1_agree": 0.89, "rel_err": 0.05, "meaningful": True}, **random)]
    accuracy = plot.plot(rows, tmp_path / "a.png").axes[1]
    assert accuracy.ylabel == "top-1 agreement with eager fp32 (%)"
    assert accuracy.points == [(4.0, 100.0), (1.0, pytest.approx(97.0)), (0.5, pytest.approx(89.0))]
    assert any("agreement shown" in text for text in accuracy.texts)
    # With real accuracy the same panel plots top-1.
    for r in rows:
        r["accuracy_valid"] = True
    assert plot.plot(rows, tmp_path / "b.png").axes[1].ylabel == "top-1 accuracy (%)"


# -- the merge command line ---------------------------------------------------------------
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_cnnbench.report", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_merges_result_files_into_one_table(tmp_path):
    gpu_env = {**ENV, "cpu": "Big CPU", "gpus": ["NVIDIA H100"], "gpu_driver": "550.1"}
    write_doc(tmp_path / "laptop.json", [cell(backend="eager", p50=4.0), cell(backend="ort", p50=1.0)])
    write_doc(tmp_path / "h100.json", [cell(backend="eager", p50=0.5, device="cuda"), cell(backend="eager", p50=0.5, device="cuda")], gpu_env)
    out = cli("laptop.json", "h100.json", "--report", "m.md,m.csv", "--report", "m.json", "--plot", "m.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("laptop.json: Test CPU (8 cores), no GPU") and lines[1].startswith("h100.json: Big CPU (8 cores), NVIDIA H100")
    rows = [line.split() for line in lines if line.startswith(("laptop.json ", "h100.json "))]
    assert [(r[0], r[2], r[3]) for r in rows] == [("laptop.json", "eager", "cpu"), ("laptop.json", "ort", "cpu"),
                                                  ("h100.json", "eager", "cuda"), ("h100.json", "eager", "cuda")]  # no de-duplication
    assert "4.00x" in lines[[i for i, line in enumerate(lines) if line.startswith("laptop.json  ")][1]]  # ort vs eager of its own file
    merged = R.load_json(tmp_path / "m.json")
    assert [r["source"] for r in merged["results"]] == ["laptop.json"] * 2 + ["h100.json"] * 2
    assert [e["source"] for e in merged["environment"]["merged"]] == ["laptop.json", "h100.json"]
    assert [r["source"] for r in csv.DictReader((tmp_path / "m.csv").open())] == [r["source"] for r in merged["results"]]
    md = (tmp_path / "m.md").read_text()
    assert "- laptop.json:" in md and "  - machine: Big CPU (8 cores), NVIDIA H100 (driver 550.1), TestOS 1" in md
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("version, expected", [
    (3, "format version 3 (written by a newer pytest-cnnbench) is not supported; this pytest-cnnbench reads versions 1, 2; upgrade"),
    (0, "format version 0 (written by an older pytest-cnnbench) is not supported"),
    (None, "not a pytest-cnnbench result file (no format_version)"),
])
def test_cli_refuses_other_format_versions(tmp_path, version, expected):
    write_doc(tmp_path / "ok.json", [cell()])
    doc = {"results": []} if version is None else {"format_version": version, "environment": {}, "results": []}
    (tmp_path / "odd.json").write_text(json.dumps(doc))
    out = cli("ok.json", "odd.json", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "error: odd.json: " in out.stderr and expected in out.stderr


def test_cli_single_file_keeps_its_environment_and_bad_report_extension_is_refused(tmp_path):
    write_doc(tmp_path / "a.json", [cell(backend="eager"), cell(backend="ort", p50=1.0)])
    out = cli("a.json", cwd=tmp_path)
    assert out.returncode == 0 and "source" not in out.stdout.splitlines()[1] and "torch 2.5.0" in out.stdout
    out = cli("a.json", "--report", "a.txt", cwd=tmp_path)
    assert out.returncode == 2 and "--report a.txt: unknown extension; valid: .md, .csv, .json" in out.stderr


# -- the plugin, as users run it ----------------------------------------------------------
def test_run_writes_reports_chart_and_environment(project):
    result = run(project, "--cnn-json=run.json", "--cnn-report=r.md,r.csv", "--cnn-report", "r.json", "--cnn-plot=r.png")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["cnnbench: written r.md, r.csv, r.json, r.png"])
    doc = R.load_json(project.path / "run.json")
    cells = doc["results"]
    assert [r["backend"] for r in cells] == ["eager", "torchscript"] and all(r["latency_ms"] for r in cells)
    assert R.load_json(project.path / "r.json")["results"] == cells

    env = doc["environment"]
    for key in ("cpu", "cpu_count", "os", "platform", "versions", "options", "argv", "git_commit", "timestamp"):
        assert key in env
    assert env["cpu_count"] >= 1 and env["versions"]["torch"] and env["versions"]["python"] and "onnxruntime" in env["versions"]
    assert "tensorrt" in env["versions"] and env["options"]["reports"] == ["r.md", "r.csv", "r.json"]
    assert ("gpus" in env) == ("gpu_driver" in env)  # both or neither: absent without an NVIDIA GPU

    rows = list(csv.DictReader((project.path / "r.csv").open()))
    assert [float(r["latency_ms_p50"]) for r in rows] == [r["latency_ms"]["p50"] for r in cells]
    assert [r["test"] for r in rows] == [r["test"] for r in cells] == [
        "test_suite.py::test_bench[tiny-eager-bs1]", "test_suite.py::test_bench[tiny-torchscript-bs1]"]

    md = (project.path / "r.md").read_text()
    assert f"- machine: {env['cpu']} ({env['cpu_count']} cores)" in md and "--cnn-plot=r.png" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| tiny")]
    assert len(table_rows) == 2 and f"{cells[0]['latency_ms']['p50']:.3f}" in table_rows[0]

    png = (project.path / "r.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000


def test_compare_passes_then_fails_the_session_naming_the_cell(project):
    assert run(project, "--cnn-json=base.json").ret == 0
    base = R.load_json(project.path / "base.json")

    # Timings on a shared machine swing by 100x and more, so the doctored baselines are out of reach of
    # any real run: 1000 s per call (nothing regresses), then 1 ns per call (eager regresses).
    # --cnn-json names the baseline file itself (a common set-up): the comparison is against the file
    # as it was when the session started.
    slow = copy.deepcopy(base)
    for r in slow["results"]:
        r["latency_ms"] = {k: (1e6 if k in ("mean", "p50", "p90", "p99", "min", "max") else v) for k, v in r["latency_ms"].items()}
        r["throughput_ips"] = r["batch_size"] / 1000.0
    R.write_json(project.path / "slow.json", slow["results"], slow["environment"])
    result = run(project, "--cnn-compare=slow.json", "--cnn-json=slow.json", "--cnn-compare-fail=p50:10%,throughput:10%")
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert "p50 chg" in out and "img/s chg" in out and "top-1 chg" in out
    changes = [line.split()[-5] for line in result.outlines if line.startswith("tiny ")]
    assert len(changes) == 2 and all(float(c.rstrip("%")) < -99 for c in changes), changes
    assert "cnnbench: every matching cell is within --cnn-compare-fail=p50:10%, throughput:10%" in out
    assert R.load_json(project.path / "slow.json")["results"][0]["latency_ms"]["p50"] < 1e6  # rewritten by this run

    # A baseline whose eager p50 is 1 ns, measured elsewhere, with a cell this run lacks.
    fast = copy.deepcopy(base)
    for cell in fast["results"][1:]:  # only the doctored cell may regress, whatever this machine's noise
        cell["latency_ms"] = {k: (1e6 if k in ("mean", "p50", "p90", "p99", "min", "max") else v) for k, v in cell["latency_ms"].items()}
    fast["results"][0]["latency_ms"]["p50"] = 1e-6
    fast["results"].append({**fast["results"][1], "backend": "ort", "test": "gone"})
    fast["environment"]["cpu"], fast["environment"]["cpu_count"] = "Imaginary CPU 9000", 64
    R.write_json(project.path / "fast.json", fast["results"], fast["environment"])
    result = run(project, "--cnn-compare=fast.json", "--cnn-compare-fail=p50:10%", "--cnn-report=cmp.md")
    assert result.ret == 1, result.stdout.str()
    result.assert_outcomes(passed=2)  # every test passed: the rule failed the session
    result.stdout.fnmatch_lines([
        "*cnnbench: 1 cell(s) regressed past --cnn-compare-fail=p50:10%*",
        "REGRESSION tiny-eager-bs1: p50 latency * vs * in the baseline (+*%, slower than rule p50:10% allows)",
    ])
    out = result.stdout.str()
    assert "REGRESSION tiny-torchscript" not in out
    assert "baseline cells not in this run: tiny-ort-bs1" in out
    assert "WARNING: the baseline was measured in a different environment: CPU model: Imaginary CPU 9000 in the baseline" in out
    assert "CPU cores: 64 in the baseline" in out
    assert [line for line in result.outlines if line.startswith("tiny ") and "%!" in line][0].split()[1] == "eager"
    md = (project.path / "cmp.md").read_text()
    assert "**1 regression(s) past the fail rules (p50:10%):**" in md and "- tiny-eager-bs1: p50 latency" in md


@pytest.mark.parametrize("args, expected", [
    (["--cnn-compare=base.json", "--cnn-compare-fail=p51:10%"],
     "--cnn-compare-fail: rule 'p51:10%': unknown metric 'p51'; valid metrics: p50, p90, p99, mean, throughput, top1, top5, speedup"),
    (["--cnn-compare-fail=p50:10%"], "--cnn-compare-fail needs --cnn-compare"),
    (["--cnn-compare=missing.json"], "--cnn-compare: result file missing.json does not exist"),
    (["--cnn-compare=v9.json"], "--cnn-compare: v9.json: result format version 9 (written by a newer pytest-cnnbench) is not supported"),
    (["--cnn-report=out.txt"], "--cnn-report: 'out.txt' has no report extension; valid: .md, .csv, .json"),
    (["--cnn-report=ok.md", "--cnn-report=/no/such/dir/r.csv"], "--cnn-report: folder /no/such/dir does not exist"),
    (["--cnn-plot=chart.jpg"], "--cnn-plot: 'chart.jpg' has no image extension; valid: .png, .svg, .pdf"),
])
def test_bad_report_and_compare_options_are_usage_errors(project, args, expected):
    write_doc(project.path / "base.json", [cell()])
    (project.path / "v9.json").write_text(json.dumps({"format_version": 9, "environment": {}, "results": []}))
    result = run(project, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str()
    assert "cnnbench results" not in result.stdout.str()


def test_ini_twins_of_report_options(project):
    write_doc(project.path / "base.json", [cell(model="tiny", backend="eager", dataset="synthetic")])
    project.makeini("[pytest]\ncnn_model = tiny\ncnn_backend = eager\ncnn_report = i.md, i.csv\n"
                    "cnn_compare = base.json\ncnn_compare_fail = p50:1000000%\n")
    result = run(project)
    assert result.ret == 0, result.stdout.str()
    assert (project.path / "i.md").exists() and (project.path / "i.csv").exists()
    assert "every matching cell is within --cnn-compare-fail=p50:1000000%" in result.stdout.str()


def test_only_the_controlling_process_writes_under_xdist(project):
    pytest.importorskip("xdist")
    result = run(project, "-n", "2", "--cnn-report=x.csv", "--cnn-json=x.json")
    assert result.ret == 0, result.stdout.str()
    rows = list(csv.DictReader((project.path / "x.csv").open()))
    assert sorted(r["backend"] for r in rows) == ["eager", "torchscript"]  # both workers' cells, once each
    assert result.stdout.str().count("cnnbench results") == 1


def test_pytest_benchmark_autosave_and_compare_keep_working(project):
    storage = f"file://{project.path / 'bench-storage'}"
    result = run(project, "--cnn-backend=eager", "--cnn-json=c.json", "--benchmark-autosave", f"--benchmark-storage={storage}")
    assert result.ret == 0, result.stdout.str()
    saved = list((project.path / "bench-storage").rglob("*.json"))
    assert len(saved) == 1
    bench = json.loads(saved[0].read_text())["benchmarks"][0]
    figures = bench["extra_info"]["cnnbench"]
    cnn = R.load_json(project.path / "c.json")["results"][0]
    assert figures["latency_ms"]["p50"] == cnn["latency_ms"]["p50"] and figures["backend"] == "eager"
    assert bench["stats"]["median"] * 1000 == pytest.approx(cnn["latency_ms"]["p50"], rel=1e-6)

    result = run(project, "--cnn-backend=eager", "--benchmark-compare", f"--benchmark-storage={storage}")
    assert result.ret == 0, result.stdout.str()
    result.stderr.fnmatch_lines(["*Comparing against benchmarks from*0001_*"])
    result.stdout.fnmatch_lines_random(["test_bench[[]tiny-eager-bs1[]] (NOW) *", "test_bench[[]tiny-eager-bs1[]] (0001_*"])
    assert "cnnbench results" in result.stdout.str()


def test_help_lists_the_report_options_and_their_ini_twins(project):
    result = project.runpytest_subprocess("--help")
    assert result.ret == 0, result.stderr.str()
    out = result.stdout.str()
    for name in ("cnn-report", "cnn-plot", "cnn-compare", "cnn-compare-fail"):
        assert f"--{name}=" in out and f"  {name.replace('-', '_')} (string)" in out
    assert "p50:10%,throughput:5%,top1:0.5" in out  # a "%" in help text must not break argparse


def test_a_session_off_its_usual_pace_is_said_once_under_the_table():
    from pytest_cnnbench import table

    slow = [cell(backend=b, machine={"pace": p, "pace_probe_us": 21.0 * p}) for b, p in (("eager", 1.7), ("ort", 1.6))]
    text = table.format_table(slow)
    verdicts = [line for line in text.splitlines() if line.startswith("session:")]
    assert len(verdicts) == 1, text
    assert "1.65x slower than its usual pace" in verdicts[0] and "35 µs against its usual 21 µs" in verdicts[0]
    assert "paired speedups, timed side by side, are not affected" in verdicts[0]
    usual = [cell(backend=b, machine={"pace": 1.03, "pace_probe_us": 21.6}) for b in ("eager", "ort")]
    assert "session:" not in table.format_table(usual)


def test_paired_speedup_is_shown_with_its_interval():
    from pytest_cnnbench import table

    rows = [cell(backend="eager", p50=4.0),
            cell(backend="ort", p50=1.0, speedup={"value": 3.9, "ci95_rel": 0.021, "paired": True, "reference": "net-eager-bs1"})]
    found = table.speedups(rows)
    assert found[1]["value"] == 3.9  # the paired figure, not the ratio of the two p50s (4.0)
    line = table.format_table(rows).splitlines()[3]
    assert "3.90x ±2.1%" in line and "~" not in line


def test_each_xdist_worker_takes_its_own_gpu():
    from pytest_cnnbench.gpu import worker_gpu

    assert [worker_gpu(f"gw{n}", 4) for n in range(6)] == [0, 1, 2, 3, 0, 1]
    assert worker_gpu(None, 4) == 0 and worker_gpu("master", 2) == 0
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        worker_gpu("gw1", 0)
