"""Threads: the paired speedup at the cell's own thread count, and threads as a table dimension."""

from __future__ import annotations

import json

import pytest

from conftest import FAST, load_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# A user's backend that runs the module itself and marks its own calls, and a model that records
# torch's thread count at each single-image call that is not the backend's: the eager reference's.
RECORDING_CONFTEST = '''
import torch
from pytest_cnnbench import register_backend
from pytest_cnnbench.backends.base import TorchPrepared

IN_CELL = [False]
REFERENCE_THREADS, CELL_THREADS = set(), set()


def record(module, inputs):
    if inputs[0].shape[0] == 1:
        (CELL_THREADS if IN_CELL[0] else REFERENCE_THREADS).add(torch.get_num_threads())


class Marked(TorchPrepared):
    def bind(self, batch):
        call = super().bind(batch)

        def marked():
            IN_CELL[0] = True
            try:
                return call()
            finally:
                IN_CELL[0] = False
        return marked


@register_backend("marked", description="runs the module itself, its calls marked")
def marked():
    class Backend:
        name = "marked"

        def unavailable_reason(self, device, precision):
            return None

        def prepare(self, module, ctx):
            if not module._forward_pre_hooks:
                module.register_forward_pre_hook(record)
            return Marked(module, ctx.device, ctx.precision, "marked", 0)
    return Backend()
'''

EQUAL_THREADS_SUITE = '''
from pytest_cnnbench import threadchoice
from pytest_cnnbench.configchoice import ChoiceEvidence


def test_bench(cnnbench):
    import conftest

    decided = ChoiceEvidence(1, {}, {}, 20, "remembered by the test", True)
    # Eager's own row would run with 1 thread (its remembered choice); this cell with 2 (its own).
    threadchoice.remember(cnnbench.bench.cache, cnnbench._choice_parts(backend="eager", precision="fp32"), 1, decided)
    threadchoice.remember(cnnbench.bench.cache, cnnbench._choice_parts(), 2, decided)
    result = cnnbench.run()
    assert result["thread_choice"]["source"] == "remembered"
    # Timed at 2 threads; on a busy machine measured again on 1 (the reference follows it there too).
    assert 2 in conftest.CELL_THREADS and conftest.CELL_THREADS <= {1, 2}
    assert conftest.REFERENCE_THREADS == conftest.CELL_THREADS, (conftest.REFERENCE_THREADS, conftest.CELL_THREADS)
    assert result["speedup"]["threads"] == result["threads"]
'''


def test_speedup_reference_runs_at_the_cells_thread_count_not_eagers_remembered_one(tiny_project):
    """A remembered eager choice of 1 thread and a cell at 2: the eager reference's timed calls ran
    with torch at 2 threads (seen from inside its calls), and the JSON's speedup says 2."""
    path = tiny_project.path / "conftest.py"
    path.write_text(path.read_text() + RECORDING_CONFTEST)
    tiny_project.makepyfile(test_suite=EQUAL_THREADS_SUITE)
    result = tiny_project.runpytest_subprocess(*FAST, "--cnn-min-time=0.1", "--cnn-backend=marked", "--cnn-json=out.json")
    result.assert_outcomes(passed=1)
    (row,) = load_results(tiny_project.path / "out.json")
    assert row["speedup"]["threads"] == row["threads"] and row["speedup"]["paired"]


def _row(backend: str, threads: int, speedup_threads: object = "absent", **extra) -> dict:
    from pytest_cnnbench import results as R

    row = R.empty_result({"model": "net", "backend": backend, "batch_size": 1, "device": "cpu", "precision": "fp32",
                          "dataset": "imagenet"})
    row.update(threads=threads, latency_ms={"p50": 2.0, "ci95_rel": 0.01}, status="passed", **extra)
    if backend != "eager":
        row["speedup"] = {"value": 1.5, "ci95_rel": 0.03, "paired": True, "reference": "net-eager-bs1"}
        if speedup_threads != "absent":
            row["speedup"]["threads"] = speedup_threads
    return row


def test_table_says_where_eagers_own_row_ran_with_another_thread_count():
    from pytest_cnnbench import table

    rows = [_row("eager", 1), _row("ort", 2, speedup_threads=2), _row("torchscript", 1, speedup_threads=1)]
    notes = "\n".join(table.table_notes(rows))
    assert "eager's own row ran with another" in notes and "net-ort-bs1 (eager at 2, its row at 1)" in notes
    assert "net-torchscript-bs1" not in notes  # same count: nothing to say
    assert "eager's own row" not in "\n".join(table.table_notes([_row("eager", 2), _row("ort", 2, speedup_threads=2)]))


def test_older_result_files_are_read_and_mixing_their_speedups_is_marked(tmp_path):
    """Format 1 (eager at its own row's threads) is still read; a merge or a comparison of its speedups
    with format 2's (equal threads) says they are not comparable."""
    from pytest_cnnbench import compare, report, table
    from pytest_cnnbench import results as R

    old = {"format_version": 1, "environment": {}, "results": [_row("eager", 1), _row("ort", 2)]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    R.write_json(tmp_path / "new.json", [_row("eager", 2), _row("ort", 2, speedup_threads=2)], {})
    documents = [R.load_json(tmp_path / "old.json"), R.load_json(tmp_path / "new.json")]
    assert documents[1]["format_version"] == R.FORMAT_VERSION == 2
    rows, _ = report.merge(documents, ["old", "new"])
    notes = "\n".join(table.table_notes(rows))
    assert "not comparable" in notes and "net-ort-bs1 [old]" in notes
    assert "not comparable" not in "\n".join(table.table_notes(documents[1]["results"]))  # one rule: no warning
    comparison = compare.compare(documents[1]["results"], documents[0]["results"])
    assert comparison.matched == 2 and any("not comparable" in line for line in comparison.notes())


def test_thread_option_takes_auto_one_count_or_a_sweep(pytester):
    from pytest_cnnbench.options import _threads

    assert _threads("auto") == (None, ()) and _threads("2") == (2, ()) and _threads(" 1, 2,4 ,2") == (None, (1, 2, 4))
    for bad in ("0", "1,x", "two", "1,,2"):
        with pytest.raises(pytest.UsageError, match="--cnn-threads"):
            _threads(bad)


def test_thread_sweep_gives_a_row_per_count_with_its_speedup_and_scaling(tiny_project):
    """--cnn-threads=1,2,N: one row per count (id -tN, the count in the cell key), each row's speedup at its
    own count, scaling efficiency for 2 threads from a side-by-side comparison; counts above the cores skip."""
    import os

    too_many = len(os.sched_getaffinity(0)) + 1
    result = tiny_project.runpytest_subprocess(*FAST, "--cnn-min-time=0.1", "--cnn-backend=torchscript",
                                               f"--cnn-threads=1,2,{too_many}", "--cnn-json=out.json", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["scaling efficiency (time at 1 thread / time at n / n*): tiny-torchscript-bs1-t2 *",
                                 f"SKIPPED * --cnn-threads={too_many}: this machine gives the process * cores"])
    rows = {r["threads_requested"]: r for r in load_results(tiny_project.path / "out.json")}
    assert set(rows) == {1, 2, too_many}
    for n in (1, 2):
        row = rows[n]
        assert row["test"].endswith(f"tiny-torchscript-bs1-t{n}]") and row["threads"] == n
        assert row["speedup"]["threads"] == n and row["speedup"]["reference"] == f"tiny-eager-bs1-t{n}"
        assert row["thread_pinning"]["torch_threads"] == n and "environment" in row["thread_pinning"]
    scaling = rows[2]["scaling"]
    assert scaling["threads"] == 2 and scaling["rounds"] >= 6 and set(scaling["medians_ms"]) == {"1", "2"}
    assert scaling["efficiency"] == pytest.approx(scaling["speedup_over_1"] / 2)
    assert rows[1]["scaling"] is None


COUNTED_BACKEND = '''
from pytest_cnnbench import register_backend
from pytest_cnnbench.backends.base import TorchPrepared

PREPARED_WITH = []


@register_backend("counted", description="a user's backend whose thread count is fixed when prepared")
def counted():
    class Backend:
        name = "counted"
        thread_use = "prepare"

        def unavailable_reason(self, device, precision):
            return None

        def prepare(self, module, ctx):
            PREPARED_WITH.append(ctx.threads)
            return TorchPrepared(module, ctx.device, ctx.precision, "counted", 0)
    return Backend()
'''


def test_a_users_backend_says_its_threads_are_fixed_when_prepared(tiny_project):
    """A registered backend's ``thread_use = "prepare"`` is heeded as ONNX Runtime's is: timed at 1 thread,
    its accuracy pass gets an instance of its own on every core (seen from its prepare calls)."""
    from pytest_cnnbench.environment import physical_cores

    path = tiny_project.path / "conftest.py"
    path.write_text(path.read_text() + COUNTED_BACKEND)
    tiny_project.makepyfile(test_suite='''
def test_bench(cnnbench):
    import conftest
    cnnbench.run()
    assert conftest.PREPARED_WITH == [1] + ([CORES] if CORES > 1 else []), conftest.PREPARED_WITH
'''.replace("CORES", str(physical_cores())))
    tiny_project.runpytest_subprocess(*FAST, "--cnn-min-time=0.1", "--cnn-backend=counted", "--cnn-threads=1",
                                      "--benchmark-disable").assert_outcomes(passed=1)
