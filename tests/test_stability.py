"""Honest error bars as users see them: disturbed cells flagged (and failed under --cnn-strict),
the machine's load recorded, thread and variant choices remembered between sessions."""

from __future__ import annotations

import json

import pytest

from conftest import FAST, load_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# A backend whose calls sleep for random times, in regimes that change every 20 calls (as a
# neighbour that comes and goes): its median cannot be pinned to 10% however long it runs.
JITTERY = '''

import random
import time

from pytest_cnnbench import register_backend


@register_backend("jittery", description="calls that sleep for random times: an unstable cell on purpose")
def jittery():
    class Prepared:
        provider, artifact_bytes, cache_hit, max_batch = "jittery", None, False, None

        def __init__(self, module):
            self.module = module

        def run(self, batch):
            import torch

            with torch.inference_mode():
                return self.module(batch).float()

        def bind(self, batch):
            rng, state = random.Random(0), {"calls": 0, "level": 1.0}  # seeded: the jitter is the same in every run

            def call():
                if state["calls"] % 20 == 0:
                    state["level"] = rng.lognormvariate(0, 1.0)
                state["calls"] += 1
                time.sleep(0.0003 * state["level"] * rng.lognormvariate(0, 0.5))

            return call

        def close(self):
            self.module = None

    class Jittery:
        name = "jittery"

        def unavailable_reason(self, device, precision):
            return None

        def prepare(self, module, ctx):
            return Prepared(module)

    return Jittery()
'''

# Makes every load count as busy, so the paths that depend on a busy machine run on any machine.
FORCE_BUSY = '''

import pytest_cnnbench.machine as _machine

_machine.busy_reasons = lambda load: ["forced busy by the test"]
'''


def add_to_conftest(pytester: pytest.Pytester, code: str) -> None:
    path = pytester.path / "conftest.py"
    path.write_text(path.read_text() + code)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*FAST, *args)


def test_unstable_cell_is_flagged_in_table_json_and_summary(tiny_project):
    add_to_conftest(tiny_project, JITTERY)
    out = tiny_project.path / "out.json"
    # The steady cell gets a longer cap, so a busy machine does not make it unstable too.
    bench_json = tiny_project.path / "bench.json"
    result = run(tiny_project, "--cnn-backend=eager,jittery", "--cnn-threads=1", "--cnn-max-time=0.4", f"--cnn-json={out}",
                 f"--benchmark-json={bench_json}")
    result.assert_outcomes(passed=2)
    rows = {r["backend"]: r for r in load_results(out)}
    wild, steady = rows["jittery"]["latency_ms"], rows["eager"]["latency_ms"]
    assert wild["stable"] is False and wild["ci95_rel"] > 0.10
    assert wild["remeasured"]["how"] == "for twice as long"
    assert wild["remeasured"]["first"]["ci95_within"] > 0.10
    # The re-measurement's calls, not the first attempt's, reach the real --benchmark-json.
    (jittery,) = [b for b in json.loads(bench_json.read_text())["benchmarks"] if "jittery" in b["name"]]
    assert jittery["stats"]["rounds"] == wild["rounds"]
    assert jittery["stats"]["median"] * 1000 == pytest.approx(wild["p50"])
    # The steady cell is usually stable; on a busy machine it may be flagged too (that is the flagging
    # working), so it is only held to saying the same thing everywhere.
    steady_flagged = steady["stable"] is False
    assert steady_flagged == (steady["disturbed"] is not None)
    assert "its own calls spread" in wild["disturbed"]
    for r in rows.values():
        load = r["machine"]
        assert load["cpus"] >= 1 and load["load_before"] is not None and load["load_during"] is not None
        assert "others_cpu" in load and "steal" in load
        assert load["pace"] > 0 and load["pace_probe_us"] > 0  # how fast the machine ran meanwhile
        assert r["latency_ms"]["blocks"] >= 3 and r["latency_ms"]["ci95_sessions"] > 0
        assert r["latency_ms"]["ci95_pace"] is not None

    text = result.stdout.str()
    table = {line.split()[1]: line for line in result.outlines if line.startswith("tiny ")}
    spread = f"{100 * wild['ci95_rel']:.1f}%?"
    assert spread in table["jittery"].split(), table["jittery"]
    assert ("%?" in table["eager"]) == steady_flagged
    assert "? disturbed: something else took the machine while this cell was timed" in text
    unstable = [line for line in result.outlines if line.startswith("DISTURBED ")]
    assert len(unstable) == 1 + steady_flagged
    (line,) = [line for line in unstable if line.startswith("DISTURBED tiny-jittery-bs1 p50 ")]
    for part in ("its own calls spread", "measured again for twice as long", "load average", "before", "during",
                 "other processes", "steal", "1 thread"):
        assert part in line, (part, line)
    assert f"{1 + steady_flagged} cell(s) disturbed while timed" in text

    env = json.loads(out.read_text())["environment"]
    assert env["load_at_start"]["cpus"] >= 1 and "others_cpu" in env["load_at_start"]


def test_strict_fails_unstable_cells_with_the_figures(tiny_project):
    add_to_conftest(tiny_project, JITTERY)
    out = tiny_project.path / "out.json"
    # Only the jittery cell: whether a steady one stays stable depends on how busy the machine is.
    result = run(tiny_project, "--cnn-backend=jittery", "--cnn-threads=1", "--cnn-max-time=0.4", "--cnn-strict",
                 f"--cnn-json={out}")
    result.assert_outcomes(failed=1)
    rows = {r["backend"]: r for r in load_results(out)}
    row = rows["jittery"]
    assert row["status"] == "failed" and row["latency_ms"]["stable"] is False
    for part in ("disturbed timing: tiny-jittery-bs1", "> 10%", "load average", "other processes", "steal", "1 thread",
                 "(--cnn-strict)"):
        assert part in row["reason"], (part, row["reason"])
    assert any("disturbed timing" in line for line in result.outlines if line.startswith("FAILED"))


def test_ini_twin_of_strict(tiny_project):
    add_to_conftest(tiny_project, JITTERY)
    tiny_project.makeini("[pytest]\ncnn_model = tiny\ncnn_strict = true\n")
    result = run(tiny_project, "--cnn-backend=jittery", "--cnn-threads=1")
    result.assert_outcomes(failed=1)
    assert "disturbed timing" in result.stdout.str()


def test_contention_remeasures_on_one_thread_and_busy_start_is_warned(tiny_project):
    add_to_conftest(tiny_project, JITTERY + FORCE_BUSY)
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=jittery", "--cnn-threads=2", f"--cnn-json={out}")
    result.assert_outcomes(passed=1)
    assert "cnnbench: WARNING: the machine is busy before timing starts (forced busy by the test)" in result.stdout.str()
    (row,) = load_results(out)
    again = row["latency_ms"]["remeasured"]
    assert again["how"].startswith("on 1 thread") and again["first"]["threads"] == 2
    assert row["threads"] == 1


def test_thread_and_variant_choices_are_remembered_between_sessions(tiny_project):
    out = tiny_project.path / "out.json"
    args = ("--cnn-backend=eager,torchscript,ort", f"--cnn-json={out}")
    run(tiny_project, *args).assert_outcomes(passed=3)
    first = {r["backend"]: r for r in load_results(out)}
    for r in first.values():
        assert r["thread_choice"]["source"] == "probed" and r["thread_choice"]["verdict"]
        assert set(r["thread_probe_ms"]) >= {"1"}
        assert r["latency_ms"]["sessions"] == 0  # no earlier session: the prior alone

    run(tiny_project, *args).assert_outcomes(passed=3)
    second = {r["backend"]: r for r in load_results(out)}
    for backend, r in second.items():
        if first[backend]["thread_choice"]["decided"]:
            assert r["thread_choice"]["source"] == "remembered" and r["thread_probe_ms"] is None
            assert r["threads"] == first[backend]["threads"]
        else:  # an undecided probe kept 1 thread for want of evidence: it is not remembered as a decision
            assert r["thread_choice"]["source"] == "probed"
        assert r["provider"] == first[backend]["provider"]  # the TorchScript variant too
        # The first session's p50 is history now, unless the machine ran off its usual pace then.
        assert r["latency_ms"]["sessions"] == (0 if first[backend]["latency_ms"]["ci95_pace"] else 1)

    run(tiny_project, *args, "--cnn-reprobe").assert_outcomes(passed=3)
    assert {r["thread_choice"]["source"] for r in load_results(out)} == {"probed"}


# A backend that runs the model as eager does, except that the batch-size-2 cell starts a CPU hog
# on every core partway through its timed calls; the hogs end when that cell is released.
HOGGED = '''

import os
import subprocess
import sys

from pytest_cnnbench import register_backend


@register_backend("hogged", description="eager, but batch size 2 starts a CPU hog on every core while timed")
def hogged():
    import torch

    class Prepared:
        provider, artifact_bytes, cache_hit, max_batch = "hogged", None, False, None

        def __init__(self, module):
            self.module, self.hogs = module, []

        def run(self, batch):
            with torch.inference_mode():
                return self.module(batch).float()

        def bind(self, batch):
            state = {"calls": 0}

            def call():
                state["calls"] += 1
                if len(batch) == 2 and state["calls"] == 400 and not self.hogs:
                    self.hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass", "cnnbench-test-hog"])
                                 for _ in range(os.cpu_count() or 1)]
                self.module(batch)

            return call

        def close(self):
            for hog in self.hogs:
                hog.kill()
                hog.wait()
            self.hogs = []

    class Hogged:
        name = "hogged"

        def unavailable_reason(self, device, precision):
            return None

        def prepare(self, module, ctx):
            return Prepared(module)

    return Hogged()
'''


def test_a_hog_started_during_one_cell_flags_that_cell_only(tiny_project):
    """A competing process started partway through one cell's timing: that cell, and not the
    cells before and after it, is flagged, with the hog named; under --cnn-strict it fails."""
    add_to_conftest(tiny_project, HOGGED)
    out = tiny_project.path / "out.json"
    args = ("--cnn-backend=hogged", "--cnn-batch-size=1,2,3", "--cnn-threads=1", "--cnn-min-time=0.5", "--cnn-max-time=1",
            f"--cnn-json={out}", "-p", "no:cacheprovider")
    result = tiny_project.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)
    rows = {r["batch_size"]: r for r in load_results(out)}
    assert rows[2]["latency_ms"]["stable"] is False, rows[2]["latency_ms"]
    assert "other processes use" in rows[2]["latency_ms"]["disturbed"]
    assert any("cnnbench-test-hog" in b["command"] for b in rows[2]["machine"]["busiest"]), rows[2]["machine"]
    assert rows[1]["latency_ms"]["stable"] is True and rows[3]["latency_ms"]["stable"] is True, \
        (rows[1]["latency_ms"]["disturbed"], rows[3]["latency_ms"]["disturbed"])
    assert [line for line in result.outlines if line.startswith("DISTURBED ")][0].startswith("DISTURBED tiny-hogged-bs2 ")

    strict = tiny_project.runpytest_subprocess(*args, "--cnn-strict")
    strict.assert_outcomes(passed=2, failed=1)
    assert any(line.startswith("FAILED") and "bs2" in line and "disturbed timing" in line for line in strict.outlines)


# Jittery, and logs each preparation and close; a preparation on 1 thread (the re-measurement's) breaks when timed.
FRAGILE = '''

import os

from pytest_cnnbench import register_backend


@register_backend("fragile", description="jittery; its 1-thread preparation raises when timed")
def fragile():
    inner = jittery()
    log, made = os.environ["CNNBENCH_TEST_CLOSE_LOG"], []

    def note(text):
        with open(log, "a") as f:
            f.write(text + "\\n")

    class Fragile:
        name = "fragile"

        def unavailable_reason(self, device, precision):
            return None

        def prepare(self, module, ctx):
            made.append(1)
            number, threads, prepared = len(made), ctx.threads, inner.prepare(module, ctx)
            note(f"prepare {number} threads={threads}")
            bind, close = prepared.bind, prepared.close

            def broken():
                raise RuntimeError("broken on 1 thread")

            def close_once_noted():
                note(f"close {number}")
                close()

            prepared.bind = (lambda batch: broken) if threads == 1 else bind
            prepared.close = close_once_noted
            return prepared

    return Fragile()
'''


def test_a_re_measurement_that_fails_closes_each_prepared_model_once(tiny_project, monkeypatch):
    """The re-measurement on 1 thread prepares the model again; when its timing then raises, the new
    preparation is closed too, and the first is not closed a second time. The cell fails; the run goes on."""
    add_to_conftest(tiny_project, JITTERY + FORCE_BUSY + FRAGILE)
    log = tiny_project.path / "closes.log"
    monkeypatch.setenv("CNNBENCH_TEST_CLOSE_LOG", str(log))
    result = run(tiny_project, "--cnn-backend=fragile,eager", "--cnn-threads=2")
    result.assert_outcomes(failed=1, passed=1)
    assert "broken on 1 thread" in result.stdout.str()
    lines = log.read_text().splitlines()
    prepared = [line.split()[1] for line in lines if line.startswith("prepare")]
    closed = [line.split()[1] for line in lines if line.startswith("close")]
    assert "threads=1" in " ".join(lines), lines  # the re-measurement ran
    assert sorted(closed) == sorted(prepared), lines
