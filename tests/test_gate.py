"""Issue 26: the regression gate (--cnn-compare-fail) cannot pass on nothing, and it has a rule on the
paired speedup, judged against both runs' intervals. Pytester runs of the tiny model; pure checks of
``compare`` on hand-made rows."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import FAST
from pytest_cnnbench import compare
from pytest_cnnbench import results as R

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SKIPPABLE_SUITE = """
import os
import pytest


def test_bench(cnnbench):
    if os.environ.get("CNNBENCH_TEST_SKIP"):
        pytest.skip("skipped on purpose")
    cnnbench.run()
"""
ENV = {"cpu": "Test CPU", "cpu_count": 2, "versions": {"torch": "2.0"}}


def row(backend: str = "eager", model: str = "tiny", p50: Any = 1.0, top1: Any = 0.9, speedup: Any = None,
        **extra: Any) -> dict[str, Any]:
    out = R.empty_result({"model": model, "backend": backend, "batch_size": 1, "device": "cpu", "precision": "fp32",
                          "dataset": "synthetic", "test": f"test_suite.py::test_bench[{model}-{backend}-bs1]"})
    out.update(status="passed", top1=top1, accuracy_valid=True, weights="pretrained", speedup=speedup,
               latency_ms={"p50": p50, "p90": p50, "p99": p50, "mean": p50, "ci95_rel": 0.01},
               throughput_ips=None if not isinstance(p50, (int, float)) else 1000.0 / p50)
    out.update(extra)
    return out


@pytest.fixture
def gate_project(tiny_project: pytest.Pytester) -> pytest.Pytester:
    tiny_project.makepyfile(test_suite=SKIPPABLE_SUITE)
    return tiny_project


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(*FAST, "--cnn-threads=1", *args)


def test_a_gate_on_a_baseline_that_matches_nothing_fails(gate_project, monkeypatch):
    R.write_json(gate_project.path / "base.json", [row(model="net")], ENV)
    monkeypatch.setenv("CNNBENCH_TEST_SKIP", "1")  # no cell needs to run: nothing matches anyway
    result = run(gate_project, "--cnn-backend=eager", "--cnn-compare=base.json", "--cnn-compare-fail=p50:5%")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "cnnbench: rule p50:5% checked 0 of 0 matching cell(s)" in out
    assert "UNCHECKED rule p50:5% checked no cell" in out
    assert "every matching cell is within" not in out


def test_a_cell_the_baseline_measured_that_now_skips_fails_the_gate(gate_project, monkeypatch):
    R.write_json(gate_project.path / "base.json", [row()], ENV)
    monkeypatch.setenv("CNNBENCH_TEST_SKIP", "1")
    result = run(gate_project, "--cnn-backend=eager", "--cnn-compare=base.json", "--cnn-compare-fail=p50:1000000%")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "UNCHECKED tiny-eager-bs1: measured in the baseline, skipped now (skipped on purpose)" in out


def test_null_and_string_figures_random_weights_and_the_speedup_rule(gate_project):
    """One real run of eager and TorchScript against a hand-made baseline: p50s that are null or a
    string (the p50 rule checks nothing), a valid top-1 where this run's weights are random (the top1
    rule cannot check it), and a paired speedup of 1000x with a 1% interval (a regression)."""
    baseline = [row("eager", p50=None), row("torchscript", p50="fast",
                                             speedup={"value": 1000.0, "ci95_rel": 0.01, "paired": True})]
    R.write_json(gate_project.path / "base.json", baseline, ENV)
    result = run(gate_project, "--cnn-backend=eager,torchscript", "--cnn-compare=base.json",
                 "--cnn-compare-fail=p50:5%,top1:0.5,speedup:5%", "--cnn-report=gate.md")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.assert_outcomes(passed=2)
    assert "cnnbench: rule p50:5% checked 0 of 2 matching cell(s) (not checked: 2 without a p50 figure in both runs)" in out
    assert "UNCHECKED rule p50:5% checked no cell" in out
    assert "UNCHECKED tiny-eager-bs1: rule top1:0.5pp cannot be checked: this run's top1 means nothing" in out
    assert "cnnbench: rule speedup:5% checked 1 of 2 matching cell(s)" in out
    result.stdout.fnmatch_lines(["REGRESSION tiny-torchscript-bs1: paired speedup * vs 1000 x in the baseline "
                                 "(-*%, lower than rule speedup:5% allows and beyond both runs' 95% intervals)"])
    md = (gate_project.path / "gate.md").read_text()
    assert "could not check what they were asked to" in md and "rule p50:5% checked 0 of 2" in md


# -- the speedup rule, pure ------------------------------------------------------------------
def speedup_pair(now: float, before: float, ci_now: float, ci_before: float) -> compare.Comparison:
    current = [row("ort", speedup={"value": now, "ci95_rel": ci_now, "paired": True})]
    base = [row("ort", speedup={"value": before, "ci95_rel": ci_before, "paired": True})]
    return compare.compare(current, base, compare.parse_rules("speedup:5%"))


def test_speedup_rule_needs_a_drop_past_the_threshold_and_outside_both_intervals():
    assert speedup_pair(1.80, 2.00, 0.02, 0.02).violations  # -10%, log drop 0.105 > hypot 0.028
    assert not speedup_pair(1.80, 2.00, 0.10, 0.05).violations  # -10%, but within the intervals (0.112)
    assert not speedup_pair(1.94, 2.00, 0.001, 0.001).violations  # -3%: under the threshold
    assert not speedup_pair(2.50, 2.00, 0.01, 0.01).violations  # faster
    within = speedup_pair(1.80, 2.00, 0.10, 0.05)
    assert within.checked == {"speedup": 1} and not within.failed
    unknown = speedup_pair(1.0, 2.0, None, 0.01)  # type: ignore[arg-type]  (an infinite interval is null in JSON)
    assert unknown.checked == {"speedup": 0} and unknown.failed
    assert "without a speedup interval in both runs" in unknown.rule_lines()[0]


def test_the_baseline_is_loaded_once_at_configure_and_not_recorded_among_the_options(pytester: pytest.Pytester):
    """--cnn-compare's file is read once, by the options (so a bad one is a usage error before anything runs);
    the session compares with that same document, and the JSON's options record its path, not its content."""
    import json
    from pathlib import Path

    from pytest_cnnbench.plugin import SESSION_KEY, SETTINGS_KEY

    saved = Path(__file__).parent / "data" / "lenet_results.json"
    baseline = pytester.path / "baseline.json"
    baseline.write_text(saved.read_text())
    config = pytester.parseconfigure(f"--cnn-compare={baseline}", "--cnn-compare-fail=p50:10%")
    settings, session = config.stash[SETTINGS_KEY], config.stash[SESSION_KEY]
    assert settings.baseline == R.load_json(baseline) and session.baseline is settings.baseline
    options = session.options()
    assert "baseline" not in options and options["compare_path"] == str(baseline)
    json.dumps(options)  # plain values, as the JSON writes them
