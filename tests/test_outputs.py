"""Issue 26: a failing output never kills the run or loses a baseline. Real faults: a file-size limit
(RLIMIT_FSIZE fails a write as a full disk does, even as root), a real FIFO, and a real pytest process
interrupted with SIGINT or SIGTERM mid-run."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST
from pytest_cnnbench import results as R

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ARGS = [*FAST, "--cnn-threads=1", "--cnn-backend=eager", "--cnn-progress=off"]


def pytest_process(project: pytest.Pytester, *args: str, file_size_limit: int | None = None,
                   **popen: object) -> subprocess.Popen:
    """A user's pytest in the project folder (pipes for its output: RLIMIT_FSIZE bites regular files only)."""
    def limit() -> None:
        # A run started in the background by a non-interactive shell inherits SIGINT ignored; Python installs
        # its KeyboardInterrupt handler only over the default, so restore that, as an interactive shell has it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.Popen([sys.executable, "-m", "pytest", *ARGS, *args], cwd=project.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=limit, **popen)


def baseline_row() -> dict:
    row = R.empty_result({"model": "tiny", "backend": "eager", "batch_size": 1, "device": "cpu", "precision": "fp32",
                          "dataset": "synthetic"})
    row.update(status="passed", latency_ms={"p50": 1e6, "p90": 1e6, "p99": 1e6, "mean": 1e6})
    return row


def test_a_full_disk_is_one_error_line_and_the_run_and_other_outputs_go_on(tiny_project):
    tiny_project.makepyfile(test_suite="""
        def test_bench(cnnbench):
            result = cnnbench.run()
            result["log"] = "x" * 200_000  # in the result file only
            cnnbench.note("a long log")
    """)
    R.write_json(tiny_project.path / "base.json", [baseline_row()], {"cpu": "Test CPU"})
    # 64 KiB: the result file (200 KiB) cannot be written, as on a full disk; the cache's files (12 KiB)
    # and the report (2 KiB) can.
    proc = pytest_process(tiny_project, "--cnn-json=out.json", "--cnn-report=r.md", "--cnn-compare=base.json",
                          file_size_limit=64 * 1024)
    out, _ = proc.communicate(timeout=300)
    assert "INTERNALERROR" not in out, out
    assert "1 passed" in out and "cnnbench results" in out  # the cell ran and the table printed
    assert out.count("cnnbench: ERROR writing out.json: OSError: [Errno 27] File too large") == 1, out
    assert "changes against baseline base.json" in out  # the comparison still ran
    assert (tiny_project.path / "r.md").read_text().startswith("#") and "written r.md" in out
    assert proc.returncode == pytest.ExitCode.INTERNAL_ERROR  # an output failed: not a clean exit
    assert not (tiny_project.path / "out.json").exists()  # nothing half-written left behind
    assert not [p for p in tiny_project.path.iterdir() if p.name.endswith(".tmp")]


def test_a_fifo_is_written_once_in_place_with_numpy_values_converted(tiny_project):
    tiny_project.makepyfile(test_suite="""
        import numpy


        def test_bench(cnnbench):
            result = cnnbench.run()
            result["np_scalar"] = numpy.float32(1.5)
            result["np_array"] = numpy.arange(3)
            cnnbench.note("numpy figures above")
    """)
    fifo = tiny_project.path / "results.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    proc = pytest_process(tiny_project, f"--cnn-json={fifo}", "--cnn-batch-size=1,2")
    out, _ = proc.communicate(timeout=300)
    if reader.is_alive():  # nothing was written to the FIFO: unblock the reader
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert proc.returncode == 0 and "INTERNALERROR" not in out, out
    doc = json.loads(received[0])  # exactly one document: one write at the end, not one per cell
    assert [r["batch_size"] for r in doc["results"]] == [1, 2]
    assert doc["results"][0]["np_scalar"] == 1.5 and doc["results"][0]["np_array"] == [0, 1, 2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_leaves_the_baseline_it_compares_with_intact(tiny_project, sig):
    started = tiny_project.path / "second-test-started"
    tiny_project.makepyfile(test_suite=f"""
        import pathlib
        import time


        def test_a_cell(cnnbench):
            cnnbench.run()


        def test_then_a_long_one():
            pathlib.Path({str(started)!r}).touch()
            time.sleep(120)
    """)
    base = tiny_project.path / "base.json"
    R.write_json(base, [baseline_row()], {"cpu": "Test CPU"})
    before = base.read_bytes()
    proc = pytest_process(tiny_project, "--cnn-json=base.json", "--cnn-compare=base.json", "-p", "no:randomly")
    deadline = time.monotonic() + 240
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), proc.communicate(timeout=30)[0]
    proc.send_signal(sig)  # the first cell finished: an old run had rewritten base.json by now
    out, _ = proc.communicate(timeout=120)
    assert base.read_bytes() == before, out
    if sig == signal.SIGINT:  # pytest ends the session: this run's finished cell is kept beside the baseline
        partial = R.load_json(tiny_project.path / "base.partial.json")["results"]
        assert [r["status"] for r in partial if r["backend"] == "eager"] == ["passed"]
        assert "base.json (the --cnn-compare baseline) is left as it was" in out
