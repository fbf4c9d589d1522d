"""The accuracy cost of a row: the paired interval, its verdicts, the Δtop-1 column and the line under the table.

Pure tests (no torch, no pytest runs) except the last, which runs LeNet on real MNIST as users do.
"""

from __future__ import annotations

import importlib.util

import pytest

from pytest_cnnbench.results import AccuracyCost
from pytest_cnnbench.stats import EXCEEDS, INCONCLUSIVE, PAIRED_METHOD, WITHIN, cost_verdict, paired_difference
from pytest_cnnbench.table import COST_HEADER, fastest_within_budget, format_table

from conftest import FAST, REPO, load_results, shared_data_root


# -- the interval: Newcombe's hybrid score interval for paired proportions (method 10) --------------
def test_newcombe_method_10_matches_the_published_example():
    # Newcombe RG. Improved confidence intervals for the difference between binomial proportions based on
    # paired data. Stat Med 1998; 17:2635-2650: the worked example a=20, b=12, c=2, d=16 (n=50), difference
    # +0.2000, method 10 (hybrid score, corrected phi): 0.0562 to 0.3292 (method 8, phi=0: 0.0618 to 0.3242).
    d = paired_difference(20, 12, 2, 16)
    assert round(d.difference, 4) == 0.2
    assert (round(d.low, 4), round(d.high, 4)) == (0.0562, 0.3292)
    assert (d.n, d.first_only, d.second_only, d.method) == (50, 12, 2, PAIRED_METHOD)
    # Fagerland MW, Lydersen S, Laake P. Recommended tests and confidence intervals for paired binomial
    # proportions. Stat Med 2014; 33:2850-2875: its example a=1, b=1, c=7, d=12 (n=21), Newcombe square-and-add
    # (method 10): -0.507 to -0.026.
    d = paired_difference(1, 1, 7, 12)
    assert (round(d.low, 3), round(d.high, 3)) == (-0.507, -0.026)


def test_no_discordant_pair_does_not_collapse_to_zero():
    """A row that flips no image is not known to cost exactly nothing: the interval is the margins'
    own uncertainty (here about ±0.04 pt on 10,000 images, ±0.4 pt on 1000), never [0, 0]."""
    for table, half in (((9900, 0, 0, 100), 0.0004), ((10000, 0, 0, 0), 0.0004), ((880, 0, 0, 120), 0.004)):
        d = paired_difference(*table)
        assert d.difference == 0
        assert -2 * half < d.low < 0 < d.high < 2 * half, (table, d)
    # one discordant pair: the interval leans its way, but still covers zero
    d = paired_difference(9900, 0, 1, 99)
    assert d.low < d.difference < 0 < d.high


@pytest.mark.parametrize("counts", [(-1, 0, 0, 1), (0, 0, 0, 0), (1.5, 0, 0, 1)])
def test_bad_counts_are_refused(counts):
    with pytest.raises(ValueError):
        paired_difference(*counts)


# -- the verdicts at their edges ----------------------------------------------------------------
@pytest.mark.parametrize("low, high, budget, verdict", [
    (-1.0, 0.5, 1.0, WITHIN),         # the worst end loses exactly the budget: within
    (-1.01, 0.5, 1.0, INCONCLUSIVE),  # just beyond: straddles
    (-3.0, -1.0, 1.0, INCONCLUSIVE),  # the best end loses exactly the budget: not beyond it
    (-3.0, -1.01, 1.0, EXCEEDS),      # even the best end loses more
    (0.2, 0.9, 0.0, WITHIN),          # a row better than eager, zero budget
    (-0.1, 0.9, 0.0, INCONCLUSIVE),
    (-0.3, -0.1, 0.0, EXCEEDS),
])
def test_verdict_edges(low, high, budget, verdict):
    assert cost_verdict(low, high, budget) == verdict


def test_verdict_refuses_nonsense():
    with pytest.raises(ValueError):
        cost_verdict(-1, 1, -0.5)
    with pytest.raises(ValueError):
        cost_verdict(1, -1, 1)


# -- the record, the column and the line: pure formatting of what the measurement made --------------
def _row(backend, precision, top1_counts, speedup=None, budget=1.0, valid=True, batch=1):
    cost = AccuracyCost.from_pairs(paired_difference(*top1_counts), None, budget, judged=valid)
    label = f"m-eager-bs{batch}"
    return {"model": "m", "backend": backend, "precision": precision, "device": "cpu", "batch_size": batch,
            "dataset": "d", "top1": 0.9, "accuracy_valid": valid, "status": "passed", "accuracy_cost": cost.as_dict(),
            "speedup": {"value": speedup, "ci95_rel": 0.03, "paired": True, "reference": label} if speedup else None}


def _eager(batch=1):
    return {"model": "m", "backend": "eager", "precision": "fp32", "device": "cpu", "batch_size": batch, "dataset": "d",
            "top1": 0.9, "accuracy_valid": True, "status": "passed", "accuracy_cost": None}


def test_record_holds_point_interval_counts_and_verdict():
    cost = AccuracyCost.from_pairs(paired_difference(880, 5, 9, 106), paired_difference(960, 2, 3, 35), 1.0, judged=True)
    d = cost.as_dict()
    assert d["delta_top1_pp"] == -0.4 and d["n"] == 1000 and (d["eager_only"], d["row_only"]) == (9, 5)
    low, high = d["ci95_pp"]
    assert low < -0.4 < high and d["verdict"] == cost_verdict(low, high, 1.0) and d["budget_pp"] == 1.0
    assert d["method"] == PAIRED_METHOD and d["delta_top5_pp"] == -0.1 and d["top5"]["eager_only"] == 3
    assert AccuracyCost.from_pairs(paired_difference(880, 5, 9, 106), None, 1.0, judged=False).verdict is None


def test_column_shows_the_measured_cost_with_its_interval():
    row = _row("ort", "int8", (880, 5, 9, 106), speedup=2.0)
    text = format_table([_eager(), row])
    low, high = row["accuracy_cost"]["ci95_pp"]
    assert COST_HEADER in text and f"-0.40 [{low:+.2f},{high:+.2f}]" in text
    # the column reads the record: a different record shows different figures (nothing recomputed from top-1)
    row["accuracy_cost"] = {**row["accuracy_cost"], "delta_top1_pp": -7.25}
    assert "-7.25 [" in format_table([_eager(), row])


def test_line_names_the_fastest_within_budget_and_the_inconclusive():
    rows = [_eager(),
            _row("ort", "fp32", (900, 0, 0, 100), speedup=1.5),                     # within, 1.5x
            _row("openvino", "int8", (890, 2, 4, 104), speedup=2.5),                # within, 2.5x: the answer
            _row("ort", "int8", (880, 5, 25, 90), speedup=4.0),                     # inconclusive, fastest
            _row("torchscript", "fp32", (800, 0, 100, 100), speedup=9.0)]           # exceeds
    assert [r["accuracy_cost"]["verdict"] for r in rows[1:]] == [WITHIN, WITHIN, INCONCLUSIVE, EXCEEDS]
    lines = fastest_within_budget(rows)
    assert "at most 1 point below eager fp32's" in lines[0]
    assert lines[1].startswith("  m: openvino int8, 2.50x the speed of eager fp32 (±3.0%), top-1 -0.20 pt [")
    assert "not yet known to be within it" in lines[1] and "ort int8 (-2.00 pt [" in lines[1]
    assert "torchscript" not in lines[1]
    assert "\n".join(lines) in format_table(rows)


def test_markdown_report_carries_the_line():
    from pytest_cnnbench.report import markdown

    rows = [_eager(), _row("openvino", "int8", (890, 2, 4, 104), speedup=2.5)]
    md = markdown(rows, {"versions": {}, "argv": []}).splitlines()
    at = next(i for i, line in enumerate(md) if line.startswith("fastest within the accuracy budget"))
    assert md[at + 1].startswith("- m: openvino int8, 2.50x the speed of eager fp32")


def test_line_says_when_none_qualifies():
    open_ = _row("ort", "int8", (880, 5, 25, 90), speedup=4.0)
    low, high = open_["accuracy_cost"]["ci95_pp"]
    assert fastest_within_budget([_eager(), open_])[1] == (
        "  m: none qualifies: no row is known to be within the budget yet; not yet known to be within it "
        f"(the interval straddles the budget): ort int8 (-2.00 pt [{low:+.2f}, {high:+.2f}])")
    exceeds = fastest_within_budget([_eager(), _row("ort", "int8", (800, 0, 100, 100), speedup=4.0)])
    assert exceeds[1] == "  m: none qualifies: every row loses more than the budget"
    random = fastest_within_budget([_eager(), _row("ort", "int8", (900, 0, 0, 100), speedup=4.0, valid=False)])
    assert random[1] == "  m: none qualifies: its accuracy means nothing here (random weights or unlabelled data)"
    untimed = fastest_within_budget([_eager(), _row("ort", "int8", (900, 0, 0, 100))])
    assert "not timed side by side with eager fp32" in untimed[1]
    assert fastest_within_budget([_eager()]) == []  # nothing but the reference: no line


def test_line_follows_the_budget_the_rows_were_judged_by():
    rows = [_eager(), _row("ort", "int8", (880, 5, 25, 90), speedup=4.0, budget=5.0)]
    lines = fastest_within_budget(rows)
    assert "at most 5 points below" in lines[0] and lines[1].startswith("  m: ort int8, 4.00x")


def test_line_names_batch_sizes_when_they_vary():
    rows = [_eager(1), _eager(8), _row("ort", "fp32", (900, 0, 0, 100), speedup=1.5, batch=1),
            _row("ort", "fp32", (900, 0, 0, 100), speedup=3.0, batch=8)]
    rows[3]["speedup"]["reference"] = "m-eager-bs8"
    assert fastest_within_budget(rows)[1].startswith("  m: ort fp32 at batch 8, 3.00x")


# -- the option ------------------------------------------------------------------------------
def test_budget_option_is_validated_with_an_ini_twin(tiny_project):
    result = tiny_project.runpytest_subprocess(*FAST, "--cnn-accuracy-budget=-1", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--cnn-accuracy-budget: '-1' is not a valid positive finite number" in result.stderr.str()
    tiny_project.makeini("[pytest]\ncnn_model = tiny\ncnn_accuracy_budget = lots\n")
    result = tiny_project.runpytest_subprocess(*FAST, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "--cnn-accuracy-budget: 'lots'" in result.stderr.str()
    assert tiny_project.runpytest_subprocess(*FAST, "--cnn-accuracy-budget=0.5", "--collect-only", "-q").ret == 0


# -- LeNet on real MNIST, as users run it ------------------------------------------------------------
# A backend that loses accuracy on purpose: eager LeNet, but one image in about twenty (chosen by its
# pixels, so the same images every pass) gets its logits rolled by one class.
LOSSY_CONFTEST = '''
from pytest_cnnbench import register_backend


@register_backend("lossy", description="eager, but about 5% of the images answered wrong on purpose")
def lossy():
    import torch

    class Prepared:
        provider, artifact_bytes, cache_hit, max_batch, math, artifact_id = "lossy", None, False, None, None, None

        def __init__(self, module):
            self.module = module

        def run(self, batch):
            with torch.inference_mode():
                logits = self.module(batch).float()
                chosen = (batch.flatten(1).abs().sum(1) * 1000).long() % 20 == 0
                return torch.where(chosen[:, None], logits.roll(1, dims=1), logits)

        def bind(self, batch):
            return lambda: self.run(batch)

        def close(self):
            pass

    class Lossy:
        name = "lossy"

        def unavailable_reason(self, device, precision):
            return None if (device, precision) == ("cpu", "fp32") else "lossy runs fp32 on the CPU only"

        def prepare(self, module, ctx):
            return Prepared(module.eval())

    return Lossy()
'''

COST_CHECKS = '''
import pytest


@pytest.mark.cnnbench(models=["lenet"], backends=["lossy"])
def test_lossy_exceeds(cnnbench):
    cnnbench.check_precision_cost(max_top1_drop_pp=1.0)


@pytest.mark.cnnbench(models=["lenet"], backends=["ort"])
def test_no_loss_allowed(cnnbench):
    if cnnbench.spec.precision != "fp32":
        pytest.skip("fp32 only")
    cnnbench.check_precision_cost(max_top1_drop_pp=0.0)
'''

DATA = shared_data_root()


@pytest.mark.skipif(DATA is None, reason="real MNIST not found (set CNNBENCH_DATA_ROOT or put it in ../shared/data)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_lenet_costs_in_the_table_the_json_and_the_line(pytester: pytest.Pytester, real_data_cache, monkeypatch):
    """LeNet eager and ONNX Runtime, fp32 and int8, on the 10,000 test digits (the shipped suite), beside a
    backend that loses ~5 points on purpose: each row's paired cost lands in the JSON record, the Δtop-1
    column shows it, the line under the table names the fastest row within the budget; check_precision_cost
    fails the lossy row (exceeds), passes an inconclusive one with its verdict in the row, and fails that one
    with --cnn-strict."""
    from pytest_cnnbench.table import _cost

    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed")
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(real_data_cache))
    pytester.copy_example(str(REPO / "suites" / "test_lenet_mnist.py"))
    pytester.makeconftest(LOSSY_CONFTEST)
    pytester.makepyfile(test_cost_checks=COST_CHECKS)
    out = pytester.path / "out.json"
    common = [*FAST, "--cnn-threads=1", "--cnn-model=lenet", f"--cnn-data-root={DATA}", "-p", "no:randomly"]
    result = pytester.runpytest_subprocess(
        *common, "--cnn-backend=eager,ort,lossy", "--cnn-precision=fp32,int8", "-k", "not (test_lenet_mnist and lossy)",
        f"--cnn-json={out}", timeout=900)
    stdout = result.stdout.str()
    rows = {(r["test_name"], r["backend"], r["precision"]): r for r in load_results(out)}
    outcomes = {key: r["status"] for key, r in rows.items()}
    assert outcomes == {**{("test_lenet_mnist", b, p): "passed" for b, p in (("eager", "fp32"), ("ort", "fp32"), ("ort", "int8"))},
                        ("test_lenet_mnist", "eager", "int8"): "skipped",
                        ("test_lossy_exceeds", "lossy", "fp32"): "failed", ("test_lossy_exceeds", "lossy", "int8"): "skipped",
                        ("test_no_loss_allowed", "ort", "fp32"): "passed", ("test_no_loss_allowed", "ort", "int8"): "skipped",
                        }, stdout[-3000:]
    assert result.ret == pytest.ExitCode.TESTS_FAILED

    # The JSON record: point, interval, counts and verdict against --cnn-accuracy-budget (1 point).
    assert rows[("test_lenet_mnist", "eager", "fp32")]["accuracy_cost"] is None  # the reference itself
    for key in (("test_lenet_mnist", "ort", "fp32"), ("test_lenet_mnist", "ort", "int8"), ("test_lossy_exceeds", "lossy", "fp32")):
        cost = rows[key]["accuracy_cost"]
        low, high = cost["ci95_pp"]
        assert cost["n"] == 10000 and cost["method"] == PAIRED_METHOD and cost["budget_pp"] == 1.0
        assert cost["delta_top1_pp"] == pytest.approx((cost["row_only"] - cost["eager_only"]) / 100, abs=1e-9)
        assert cost["delta_top1_pp"] == pytest.approx(rows[key]["delta_top1_pp"], abs=1e-9)
        assert low < cost["delta_top1_pp"] < high or cost["delta_top1_pp"] == low == high == 0
        assert cost["verdict"] == cost_verdict(low, high, 1.0)
        assert cost["delta_top5_pp"] is not None and len(cost["top5"]["ci95_pp"]) == 2
        assert _cost(rows[key]) in stdout  # the Δtop-1 column shows the record's figures
    assert COST_HEADER in stdout
    assert rows[("test_lenet_mnist", "ort", "fp32")]["accuracy_cost"]["eager_only"] == 0  # same math as eager
    lossy = rows[("test_lossy_exceeds", "lossy", "fp32")]
    assert lossy["accuracy_cost"]["verdict"] == EXCEEDS and lossy["accuracy_cost"]["eager_only"] > 300

    # check_precision_cost: exceeds fails with point, interval and counts; inconclusive passes, said in the row.
    cost = lossy["accuracy_cost"]
    assert (f"accuracy cost exceeds the allowance: top-1 {cost['delta_top1_pp']:+.2f} pt vs eager fp32, 95% CI "
            f"[{cost['ci95_pp'][0]:+.2f}, {cost['ci95_pp'][1]:+.2f}]") in lossy["reason"]
    assert f"{cost['eager_only']} images right only in eager fp32, {cost['row_only']} only in this row, of 10000" in lossy["reason"]
    open_ = rows[("test_no_loss_allowed", "ort", "fp32")]
    assert open_["accuracy_cost"]["check"]["verdict"] == {"top-1": INCONCLUSIVE}
    assert any(note.startswith("accuracy cost inconclusive: top-1 +0.00 pt") for note in open_["notes"])

    # The line: of the rows within the budget, the one with the best paired speedup over eager fp32.
    within = [r for r in rows.values() if (r["accuracy_cost"] or {}).get("verdict") == WITHIN and r["speedup"]]
    assert within
    best = max(within, key=lambda r: r["speedup"]["value"])
    assert "fastest within the accuracy budget, per model" in stdout
    assert f"  lenet: {best['backend']} {best['precision']}, {best['speedup']['value']:.2f}x the speed of eager fp32" in stdout

    # --cnn-strict: the inconclusive row fails (timing off, so only the cost can fail it).
    strict = pytester.runpytest_subprocess(*common, "--cnn-backend=ort", "--cnn-strict", "--benchmark-disable",
                                           "test_cost_checks.py::test_no_loss_allowed", timeout=600)
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    strict.stdout.fnmatch_lines(["*accuracy cost inconclusive (--cnn-strict): top-1 +0.00 pt vs eager fp32*allowed loss 0 pt*"])
