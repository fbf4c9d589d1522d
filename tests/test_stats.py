"""The statistics (stats.py), the machine's load (machine.py) and remembered choices (between_sessions.py): none needs torch."""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_cnnbench import machine, between_sessions
from pytest_cnnbench import stats as measure
from pytest_cnnbench.cache import ArtifactCache


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- small pieces ---------------------------------------------------------------------------------
def test_t975_matches_the_table_and_tends_to_normal():
    assert measure.t975(1) == pytest.approx(12.706, abs=1e-3)
    assert measure.t975(9) == pytest.approx(2.262, abs=1e-3)
    assert measure.t975(40) == pytest.approx(2.021, abs=0.003)
    assert measure.t975(120) == pytest.approx(1.980, abs=0.003)
    assert math.isinf(measure.t975(0))


def block_data(rng: random.Random, blocks: int, size: int, block_sd: float, call_sd: float = 0.05) -> list[float]:
    """Calls (around 1.0) whose blocks each share a random level, as on a machine whose speed drifts."""
    out = []
    for _ in range(blocks):
        level = math.exp(rng.gauss(0, block_sd))
        out += [level * math.exp(rng.gauss(0, call_sd)) for _ in range(size)]
    return out


def test_block_bootstrap_covers_the_true_median_when_blocks_drift():
    """With block-level drift, the block bootstrap's 95% interval holds the true median (1.0) about 95% of the
    time, where the order-statistics interval (calls as independent) holds it far less often."""
    rng = random.Random(1)
    covered_blocks = covered_calls = 0
    trials = 150
    for _ in range(trials):
        values = block_data(rng, blocks=10, size=30, block_sd=0.03)
        p50 = statistics.median(values)
        miss = abs(p50 - 1.0) / p50
        covered_blocks += miss <= measure.block_bootstrap_ci(values, 10, resamples=400)
        covered_calls += miss <= measure.median_ci(sorted(values))
    assert covered_blocks / trials >= 0.88
    assert covered_calls / trials <= 0.75  # what the block structure is for


def test_block_bootstrap_shrugs_off_one_disturbed_block():
    """One block three times slower (a neighbour's burst) barely moves the pooled median; the t-interval on
    the mean of block medians would call the cell unstable."""
    rng = random.Random(2)
    values = block_data(rng, blocks=10, size=30, block_sd=0.0, call_sd=0.02)
    values[90:120] = [3 * v for v in values[90:120]]
    assert measure.block_bootstrap_ci(values, 10) < 0.03
    assert measure.block_median_ci(values) > measure.UNSTABLE_CI


def test_latency_stats_with_blocks_and_sessions():
    rng = random.Random(3)
    seconds = [v / 1000 for v in block_data(rng, blocks=10, size=20, block_sd=0.01)]
    stats = measure.latency_stats(seconds, target_ci=0.02, blocks=10, span_s=1.0)
    assert stats.blocks == 10 and stats.rounds == 200 and stats.span_s == 1.0
    assert stats.ci95_within == stats.ci95_rel
    assert stats.ci95_within >= measure.median_ci(sorted(v * 1000 for v in seconds))
    combined = stats.with_sessions(0.03, sessions=4, target_ci=0.02)
    assert combined.ci95_rel == pytest.approx(math.hypot(stats.ci95_within, 0.03))
    assert combined.ci95_sessions == 0.03 and combined.sessions == 4 and combined.stable is True
    assert combined.converged == (stats.ci95_within <= 0.02)
    spread = measure.latency_stats([v * (3 if i >= 100 and i % 2 else 1) for i, v in enumerate(seconds)], blocks=10)
    assert spread.with_sessions(0.03, sessions=4).stable is False  # its own calls spread beyond 10%


def test_session_spread_starts_from_the_prior_and_follows_history():
    prior = measure.session_spread([])
    assert prior == pytest.approx(measure.t975(4) * measure.SESSION_PRIOR_SD)
    assert measure.session_spread([0.05]) == pytest.approx(prior)  # one session says nothing about spread
    steady = [0.05] * 20
    assert measure.session_spread(steady) < prior / 2  # a steady machine earns a narrower spread
    rng = random.Random(4)
    wild = [0.05 * math.exp(rng.gauss(0, 0.05)) for _ in range(20)]
    assert measure.session_spread(wild) > 0.07  # sessions 5% apart (sd): about two sd
    # Only the latest SESSION_HISTORY sessions count.
    assert measure.session_spread(wild + steady) == pytest.approx(measure.session_spread(steady))


def test_session_spread_holds_between_simulated_sessions():
    """Sessions whose p50 strays 1.5% (sd) between them: pairs differ by more than the two stated spreads
    added in well under 5% of pairs, with the history each session would have had."""
    rng = random.Random(5)
    history: list[float] = []
    failures = pairs = 0
    for _ in range(60):
        a, b = (math.exp(rng.gauss(0, 0.015)) for _ in range(2))
        sa = measure.session_spread(history)
        history.append(a)
        sb = measure.session_spread(history)
        history.append(b)
        pairs += 1
        failures += abs(a - b) / a > sa + sb
    assert failures / pairs < 0.05


# -- the machine's load ---------------------------------------------------------------------------
def test_load_between_snapshots():
    """CPU seconds between two snapshots: others' share of all CPUs (a process that started within
    the span counts whole), steal, the busiest by name; the 1-minute load average is no reason."""
    start = machine.Snapshot(0.0, (3.0, 2.0, 1.0), {"total": 100.0, "steal": 1.0},
                             {10: ("python", 10.0), 11: ("stress", 0.0), 12: ("gone", 0.5)})
    end = machine.Snapshot(1.0, (4.0, 2.0, 1.0), {"total": 102.0, "steal": 1.2},
                           {10: ("python", 10.5), 11: ("stress", 1.0), 13: ("new", 0.4)})
    load = machine.between(start, end, load_seen=5.0)
    cpus = machine.cpu_count()
    assert load.load_before == 3.0 and load.load_during == 5.0
    assert load.steal == pytest.approx(0.2 / 2.0)
    assert load.others_cpu == pytest.approx(min(1.0, 1.9 / cpus))
    assert [share for _, share in load.busiest] == pytest.approx([1.0, 0.5, 0.4])
    reasons = machine.busy_reasons({**load.as_dict(), "cpus": 2, "load_before": 3.0})
    assert any("steal" in r for r in reasons) and not any("load average" in r for r in reasons)
    assert machine.busy_reasons({"cpus": 2, "load_before": 2.6, "others_cpu": 0.1, "steal": 0.0}) == []


def test_disturbance_is_the_cells_own_not_the_sessions():
    quiet = {"cpus": 2, "others_cpu": 0.02, "steal": 0.0, "pace": 1.7}
    assert machine.disturbance(quiet) is None  # a whole session slow: not the cell's, said once for the session
    assert "other processes use 90%" in machine.disturbance({**quiet, "others_cpu": 0.9})
    assert "steal time 8.0%" in machine.disturbance({**quiet, "steal": 0.08})


def test_statistics_import_without_torch():
    code = "import sys; import pytest_cnnbench.stats, pytest_cnnbench.machine; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paired_speedup_cancels_drift_and_states_its_interval():
    """The machine slows threefold every other block: chunk by chunk, the reference's time over the
    cell's is still the true ratio (2), with a narrow interval; the ratio of the two overall medians
    would carry the drift. Noise in the pairs widens the interval, and it covers the truth."""
    rng = random.Random(7)
    chunks, cell, ref = [], [], []
    for block in range(20):
        level = 3.0 if block % 2 else 1.0
        for _ in range(5):
            start = len(cell)
            for _ in range(4):
                cell.append(level * 1e-3 * math.exp(rng.gauss(0, 0.01)))
                ref.append(level * 2e-3 * math.exp(rng.gauss(0, 0.01)))
            chunks.append((block, start, len(cell)))
    value, half, count = measure.paired_speedup(cell, ref, chunks)
    assert count == 100 and value == pytest.approx(2.0, rel=0.01) and half < 0.01
    covered = 0
    for trial in range(40):
        rng = random.Random(100 + trial)
        noisy_ref = [r * math.exp(rng.gauss(0, 0.05)) for r in ref]
        value, half, _ = measure.paired_speedup(cell, noisy_ref, chunks, resamples=300)
        covered += abs(value / 2.0 - 1) <= half
    assert covered >= 34  # ~95% nominal


def test_session_pace_is_the_median_of_its_cells():
    assert measure.session_pace([1.6, 1.7, None, 1.5]) == pytest.approx(1.6)
    assert measure.session_pace([None]) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc")
def test_sample_sees_a_busy_neighbour():
    neighbour = subprocess.Popen([sys.executable, "-c", "while 1: pass", "cnnbench-test-neighbour"])
    try:
        time.sleep(0.3)
        load = machine.sample(0.6)
    finally:
        neighbour.kill()
        neighbour.wait()
    assert load.others_cpu is not None and load.others_cpu >= 0.2 / load.cpus
    assert any("cnnbench-test-neighbour" in command for command, _ in load.busiest), load.busiest
    text = machine.describe(load.as_dict(), threads=2)
    assert "load average" in text and "other processes" in text and "steal" in text and "2 threads" in text


def test_choices_are_remembered_per_machine_and_cell(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path)
    cell = ("modelkey", "eager", 1, "fp32", "cpu", "mnist", (1, 28, 28))
    assert between_sessions.remembered_choice(cache, "threads", cell) is None
    between_sessions.remember_choice(cache, "threads", cell, 2, {"verdict": "2 clearly faster"})
    assert between_sessions.remembered_choice(cache, "threads", cell)["choice"] == 2
    assert between_sessions.remembered_choice(cache, "threads", cell, reprobe=True) is None
    assert between_sessions.remembered_choice(cache, "threads", ("otherkey", *cell[1:])) is None
    identity = between_sessions.machine_identity()
    monkeypatch.setattr(between_sessions, "machine_identity", lambda: {**identity, "torch": "0.0.1"})
    assert between_sessions.remembered_choice(cache, "threads", cell) is None  # new versions: probe again


def test_earlier_sessions_exclude_this_one_and_keep_the_latest(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path)
    parts = ("cell", 1, "CPUExecutionProvider")
    for index in range(5):
        monkeypatch.setattr(between_sessions, "SESSION_ID", f"s{index}")
        between_sessions.add_session(cache, parts, {"p50": 1.0 + index}, keep=3)
    assert between_sessions.earlier_p50s(cache, parts) == [3.0, 4.0]  # s4 is "this" session; only the last 3 were kept
    between_sessions.add_session(cache, parts, {"p50": 9.0}, keep=3)  # this session again: replaces its own entry
    monkeypatch.setattr(between_sessions, "SESSION_ID", "later")
    assert between_sessions.earlier_p50s(cache, parts) == [3.0, 4.0, 9.0]


def test_only_sessions_known_to_run_at_the_usual_pace_join_the_history():
    assert measure.at_usual_pace(1.0) and measure.at_usual_pace(1.05) and measure.at_usual_pace(1 / 1.05)
    assert not measure.at_usual_pace(1.6)  # ran slow: its own pace term states it
    assert not measure.at_usual_pace(None)  # could not be judged (no reference yet): vouches for nothing
    assert not measure.at_usual_pace(0.0)


def test_pace_spread_counts_only_beyond_the_probes_noise():
    assert measure.pace_spread(None) == 0.0
    assert measure.pace_spread(1.05) == 0.0  # within the probe's noise: the usual pace
    assert measure.pace_spread(1.6) == pytest.approx(0.6)  # the machine ran 60% slower
    assert measure.pace_spread(1 / 1.5) == pytest.approx(0.5)  # faster than the usual: as far off
    stats = measure.latency_stats([0.001] * 60, blocks=10)
    slow_session = stats.with_sessions(0.03, 2, pace_term=0.6)
    # The spread states the session's pace; the verdict is the cell's own, said once for the session.
    assert slow_session.ci95_rel == pytest.approx(math.sqrt(0.03 ** 2 + 0.6 ** 2), rel=1e-3)
    assert slow_session.stable is True and slow_session.disturbed is None
    disturbed = stats.with_sessions(0.03, 2, pace_term=0.0, disturbed="other processes use 90% of the CPUs")
    assert disturbed.stable is False and "90%" in disturbed.disturbed


def test_pace_reference_is_the_faster_of_own_and_remembered():
    reference = machine.PaceReference()
    assert reference.reference() is None
    reference.add([2e-5] * 9)
    assert reference.own() is None  # too few probes
    reference.add([2e-5] * 30 + [4e-5] * 30)  # half of them in a slow stretch
    assert reference.own() == pytest.approx(2e-5)
    assert machine.pace_of([4e-5] * 5, reference.reference()) == pytest.approx(2.0)
    reference.remembered = [1.8e-5, 1.9e-5, 5e-5]
    assert reference.reference() == pytest.approx(1.9e-5)  # earlier sessions ran faster: their median


def test_pace_probe_is_steady():
    """Back to back, the probe's middle runs agree (its first run's context is paid for inside it).
    30 probes last about 1 ms, and a host slow stretch can cover one such sample (1 run in 8 here,
    on a noisy day), so up to three samples are taken, as the runner measures a disturbed cell again;
    a probe that is itself unsteady fails all three."""
    samples = [sorted(machine.pace_probe() for _ in range(30)) for _ in range(3)]
    spreads = [quiet[-5] / quiet[5] for quiet in samples]
    assert min(spreads) < 1.5, spreads
    assert all(1e-6 < quiet[15] < 1e-3 for quiet in samples)


