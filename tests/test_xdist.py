"""pytest-xdist as the scale-out path: the same table as a serial run, every cell timed, and no two
workers' timed sections at the same moment."""

from __future__ import annotations

import pytest

from conftest import FAST, load_results

pytest.importorskip("xdist")


def windows_overlap(rows: list[dict]) -> list[tuple[str, str]]:
    spans = sorted((r["timing_window"]["start"], r["timing_window"]["end"], r["test"]) for r in rows)
    return [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


def test_two_workers_time_every_cell_one_at_a_time(tiny_project, tmp_path):
    args = ("--cnn-backend=eager,torchscript,ort", "--cnn-batch-size=1,2", "--cnn-threads=1", *FAST, "--cnn-min-time=0.3")
    out = tmp_path / "parallel.json"
    result = tiny_project.runpytest_subprocess("-n", "2", *args, f"--cnn-json={out}")
    result.assert_outcomes(passed=6)
    rows = load_results(out)
    assert len(rows) == 6 and len({r["test"] for r in rows}) == 6
    assert {r["backend"] for r in rows} == {"eager", "torchscript", "ort"}
    for r in rows:
        assert r["latency_ms"]["p50"] > 0 and r["latency_ms"]["rounds"] >= 5, r["test"]
        assert r["timing_window"]["end"] > r["timing_window"]["start"]
        if r["backend"] != "eager":
            assert r["speedup"]["paired"] and r["speedup"]["value"] > 0
    assert windows_overlap(rows) == []
    text = result.stdout.str()
    assert text.count("tiny ") >= 6 and "cnnbench results" in text  # one table, in the controlling process

    serial = tmp_path / "serial.json"
    tiny_project.runpytest_subprocess(*args, f"--cnn-json={serial}").assert_outcomes(passed=6)
    columns = {tuple(sorted(r)) for r in load_results(serial)} | {tuple(sorted(r)) for r in rows}
    assert len(columns) == 1  # the same fields serial or parallel


def test_machine_lock_keeps_timed_sections_apart_across_processes(tmp_path):
    """Real processes: two hold the lock shared at once (untimed work side by side); an exclusive
    holder (a timed section) never overlaps anyone."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, time
        from pytest_cnnbench.worklock import MachineLock
        lock, mode, log = MachineLock("cpu"), sys.argv[1], sys.argv[2]
        with getattr(lock, mode)():
            start = time.time(); time.sleep(0.4); end = time.time()
        open(log, "a").write(f"{mode} {start} {end}\\n")
    """)
    log = tmp_path / "log"
    env = {**__import__("os").environ, "CNNBENCH_LOCK_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, mode, str(log)], env=env)
             for mode in ("shared", "shared", "exclusive", "shared", "exclusive")]
    for proc in procs:
        assert proc.wait(timeout=30) == 0
    spans = [(mode, float(a), float(b)) for mode, a, b in (line.split() for line in log.read_text().splitlines())]
    assert len(spans) == 5
    for i, (mode, a, b) in enumerate(spans):
        for other, c, d in spans[i + 1:]:
            if "exclusive" in (mode, other):
                assert b <= c or d <= a, (spans)
