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
from pytest_cnnbench.timing import Comparison


def test_bench(cnnbench):
    import conftest

    decided = Comparison(1, {}, {}, 20, "remembered by the test", True)
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
