"""The timing statistics (measure.py), the machine's load (machine.py) and remembered choices (tuning.py)."""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_cnnbench import machine, measure, tuning
from pytest_cnnbench.cache import ArtifactCache


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- small pieces ---------------------------------------------------------------------------------
def test_t975_matches_the_table_and_tends_to_normal():
    assert measure.t975(1) == pytest.approx(12.706)
    assert measure.t975(9) == pytest.approx(2.262)
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
    assert stats.with_sessions(0.2, sessions=4).stable is False


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


# -- the timed loop -------------------------------------------------------------------------------
class FakeBenchmark:
    """Enough of pytest-benchmark's fixture for the timing functions: pedantic mode and its stats."""

    disabled = False

    def __init__(self) -> None:
        from pytest_benchmark.stats import Stats

        self.stats = type("Meta", (), {})()
        self.stats.stats = Stats()
        self.used = 0

    def pedantic(self, target, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        assert iterations == 1 and warmup_rounds == 0
        self.used += 1
        for _ in range(rounds):
            if setup is not None:
                setup()
            started = time.perf_counter()
            target()
            self.stats.stats.update(time.perf_counter() - started)


def test_plan_spreads_short_calls_over_min_time_in_equal_blocks():
    rules = measure.TimingRules(warmup=2, min_rounds=50, max_rounds=400, max_time=1.0, target_ci=0.02, min_time=0.3)
    plan = measure.plan_timing(lambda: busy_wait(0.0002), rules)
    assert plan.blocks == measure.BLOCKS and plan.rounds % plan.blocks == 0 and plan.rounds <= 400 + plan.blocks
    assert plan.gap_s > 0 and plan.rewarm >= 1
    bench = FakeBenchmark()
    ticks = []
    timing = measure.time_with_benchmark(bench, lambda: busy_wait(0.0002), rules, on_block=lambda: ticks.append(1))
    assert bench.used == 1 and len(bench.stats.stats.data) == timing.stats.rounds
    assert len(ticks) == timing.plan.blocks
    assert timing.stats.blocks == timing.plan.blocks
    assert 0.25 <= timing.stats.span_s <= 1.0  # the pauses spread the blocks over min_time, within the cap


def test_pauses_between_blocks_spin_rather_than_sleep():
    """A sleeping vCPU is woken wherever the host puts it (often beside a busy neighbour): the
    pauses keep the CPU, so the process's CPU time covers the timed loop's wall time."""
    rules = measure.TimingRules(warmup=2, min_rounds=50, max_rounds=200, max_time=1.0, target_ci=0.02, min_time=0.4)
    wall, cpu = time.perf_counter(), time.process_time()
    timing = measure.time_with_benchmark(FakeBenchmark(), lambda: busy_wait(0.0002), rules)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert timing.plan.gap_s > 0.01 and timing.stats.span_s >= 0.35
    assert cpu >= 0.8 * wall, (cpu, wall)


def test_long_calls_get_no_pauses():
    rules = measure.TimingRules(warmup=1, min_rounds=30, max_rounds=60, max_time=0.2, min_time=0.05)
    plan = measure.plan_timing(lambda: busy_wait(0.002), rules)
    assert plan.gap_s == 0 and plan.rewarm == 0


def test_companions_run_beside_each_block_and_thread_count_is_restored():
    import torch

    threads = torch.get_num_threads()
    rules = measure.TimingRules(warmup=1, min_rounds=30, max_rounds=60, max_time=0.2, min_time=0.05)

    def companion():
        torch.set_num_threads(1)
        busy_wait(0.0004)

    seen = []
    timing = measure.time_with_benchmark(FakeBenchmark(), lambda: seen.append(torch.get_num_threads()) or busy_wait(0.0002),
                                         rules, companions={"slower": companion})
    other = timing.companions["slower"]
    assert other.rounds == timing.stats.rounds and other.blocks == timing.stats.blocks
    assert set(seen) == {threads}  # the cell's calls never ran on the companion's thread count
    assert other.p50 > 1.5 * timing.stats.p50


def test_time_again_replaces_the_fixtures_rounds():
    rules = measure.TimingRules(warmup=1, min_rounds=30, max_rounds=60, max_time=0.2, min_time=0.05)
    bench = FakeBenchmark()
    measure.time_with_benchmark(bench, lambda: busy_wait(0.0002), rules)
    again = measure.time_again(bench, lambda: busy_wait(0.0006), rules.longer())
    data = bench.stats.stats.data
    assert len(data) == again.stats.rounds
    assert statistics.median(data) * 1000 == pytest.approx(again.stats.p50)
    assert again.stats.p50 > 0.5  # the second call's times, not the first's


@pytest.mark.parametrize("b_seconds, expected", [(0.0005, "b"), (0.00098, "a"), (0.001, "a")])
def test_compare_interleaved_needs_a_clear_win_to_leave_the_default(b_seconds, expected):
    comparison = measure.compare_interleaved({"a": lambda: busy_wait(0.001), "b": lambda: busy_wait(b_seconds)},
                                             budget_s=1.5)
    assert comparison.choice == expected, comparison.verdict
    assert comparison.rounds >= 6
    ratio, lo, hi = comparison.ratios["b"]
    assert lo <= ratio <= hi
    assert set(comparison.as_dict()["medians_ms"]) == {"a", "b"}


def test_compare_interleaved_runs_before_hooks():
    seen = []
    measure.compare_interleaved({1: lambda: busy_wait(1e-4), 2: lambda: busy_wait(1e-4)},
                                before={1: lambda: seen.append(1), 2: lambda: seen.append(2)}, min_rounds=4, max_rounds=4)
    assert seen[:3] == [1, 2, 1] and seen.count(1) == seen.count(2) == 5  # one warm-up, four rounds (ABBA...)


# -- the machine's load ---------------------------------------------------------------------------
def test_load_between_snapshots():
    start = machine.Snapshot(0.0, (3.0, 2.0, 1.0), {"total": 1000, "steal": 10},
                             {10: ("python", 100), 11: ("stress", 0), 12: ("gone", 5)})
    end = machine.Snapshot(1.0, (4.0, 2.0, 1.0), {"total": 1200, "steal": 30},
                           {10: ("python", 150), 11: ("stress", 100), 13: ("new", 40)})
    load = machine.between(start, end, load_seen=5.0)
    hz, cpus = machine._HZ, machine.cpu_count()
    assert load.load_before == 3.0 and load.load_during == 5.0
    assert load.steal == pytest.approx(20 / 200)
    assert load.others_cpu == pytest.approx(min(1.0, 150 / (hz * cpus)))
    assert [share for _, share in load.busiest] == pytest.approx([100 / hz, 50 / hz])
    reasons = machine.busy_reasons({**load.as_dict(), "cpus": 2, "load_before": 3.0})
    assert any("load average 3.00 on 2 CPUs" in r for r in reasons) and any("steal" in r for r in reasons)
    assert machine.busy_reasons({"cpus": 2, "load_before": 0.5, "others_cpu": 0.1, "steal": 0.0}) == []


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


def test_unstable_message_names_cell_spread_and_load():
    result = {"model": "tiny", "backend": "jittery", "batch_size": 1, "precision": "fp32", "threads": 2,
              "latency_ms": {"p50": 1.5, "ci95_rel": 0.3, "ci95_within": 0.29, "ci95_sessions": 0.03,
                             "remeasured": {"how": "for twice as long", "first": {"ci95_within": 0.4, "threads": 2}}},
              "machine": {"cpus": 2, "load_before": 1.5, "load_during": 2.5, "others_cpu": 0.4, "steal": 0.01,
                          "busiest": [{"command": "stress", "cpu": 0.8}]}}
    text = machine.unstable_message(result)
    for part in ("tiny-jittery-bs1", "±30.0% > 10%", "for twice as long", "±40.0%", "load average 1.50 before, 2.50 during",
                 "other processes 40% of the CPUs (stress 80%)", "steal 1.0%", "2 threads"):
        assert part in text, (part, text)


# -- remembered choices and earlier sessions -----------------------------------------------------------
def test_choices_are_remembered_per_machine_and_cell(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path)
    cell = ("modelkey", "eager", 1, "fp32", "cpu", "mnist", (1, 28, 28))
    assert tuning.remembered_choice(cache, "threads", cell) is None
    tuning.remember_choice(cache, "threads", cell, 2, {"verdict": "2 clearly faster"})
    assert tuning.remembered_choice(cache, "threads", cell)["choice"] == 2
    assert tuning.remembered_choice(cache, "threads", cell, reprobe=True) is None
    assert tuning.remembered_choice(cache, "threads", ("otherkey", *cell[1:])) is None
    identity = tuning.machine_identity()
    monkeypatch.setattr(tuning, "machine_identity", lambda: {**identity, "torch": "0.0.1"})
    assert tuning.remembered_choice(cache, "threads", cell) is None  # new versions: probe again


def test_earlier_sessions_exclude_this_one_and_keep_the_latest(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path)
    parts = ("cell", 1, "CPUExecutionProvider")
    for index in range(5):
        monkeypatch.setattr(tuning, "SESSION_ID", f"s{index}")
        tuning.add_session(cache, parts, {"p50": 1.0 + index}, keep=3)
    assert tuning.earlier_p50s(cache, parts) == [3.0, 4.0]  # s4 is "this" session; only the last 3 were kept
    tuning.add_session(cache, parts, {"p50": 9.0}, keep=3)  # this session again: replaces its own entry
    monkeypatch.setattr(tuning, "SESSION_ID", "later")
    assert tuning.earlier_p50s(cache, parts) == [3.0, 4.0, 9.0]


def test_paired_ratio_cancels_drift_between_chunks():
    """The machine slows down threefold every other 30 ms: chunk by chunk, the cell's time over its
    companion's is still the true ratio (2)."""
    started = time.perf_counter()

    def factor() -> float:
        return 3.0 if int((time.perf_counter() - started) / 0.03) % 2 else 1.0

    rules = measure.TimingRules(warmup=1, min_rounds=200, max_rounds=400, max_time=0.6, min_time=0.3)
    timing = measure.time_with_benchmark(FakeBenchmark(), lambda: busy_wait(0.0004 * factor()), rules,
                                         companions={"half": lambda: busy_wait(0.0002 * factor())})
    ratio, chunks = timing.paired["half"]
    assert chunks >= 10
    assert ratio == pytest.approx(2.0, rel=0.1)


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
    assert stats.with_sessions(0.03, 2, pace_term=0.6).stable is False
    assert stats.with_sessions(0.03, 2, pace_term=0.6).ci95_rel == pytest.approx(math.sqrt(0.03 ** 2 + 0.6 ** 2), rel=1e-3)


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


def test_waiting_for_the_usual_pace_ends_when_the_slow_stretch_does(monkeypatch):
    reference = machine.PaceReference()
    reference.add([2e-5] * 50)
    monkeypatch.setattr(machine, "PACE", reference)
    slow_until = time.monotonic() + 0.5
    probe = lambda: (time.sleep(1e-4), 3e-5 if time.monotonic() < slow_until else 2e-5)[1]  # noqa: E731
    waited, pace = machine.wait_for_usual_pace(limit_s=5.0, window_s=0.05, probe=probe)
    assert 0.4 <= waited < 2.0 and pace == pytest.approx(1.0)
    # A machine that stays slow: it gives up at the limit and says how slow it still was.
    waited, pace = machine.wait_for_usual_pace(limit_s=0.3, window_s=0.05, probe=lambda: (time.sleep(1e-4), 3e-5)[1])
    assert 0.3 <= waited < 1.0 and pace == pytest.approx(1.5)
    # No reference yet (the session's first probes): nothing to wait for.
    monkeypatch.setattr(machine, "PACE", machine.PaceReference())
    assert machine.wait_for_usual_pace(limit_s=5.0, probe=lambda: 3e-5) == (0.0, None)


def test_unstable_message_says_it_waited_for_the_usual_pace():
    result = {"model": "tiny", "backend": "eager", "batch_size": 1, "precision": "fp32", "threads": 1,
              "latency_ms": {"p50": 1.5, "ci95_rel": 0.3, "ci95_within": 0.05, "ci95_sessions": 0.03,
                             "remeasured": {"how": "for twice as long", "waited_s": 15.0, "pace_after_wait": 1.4,
                                            "first": {"ci95_within": 0.04, "threads": 1, "pace": 1.5}}},
              "machine": {"cpus": 2, "load_before": 0.2, "load_during": 1.0, "others_cpu": 0.0, "steal": 0.0, "pace": 1.3}}
    text = machine.unstable_message(result)
    for part in ("at 1.50x the usual pace", "waited 15.0 s for the usual pace first, and the machine stayed slow",
                 "a reference loop took 1.30x its usual time (the machine ran slow with nothing in it busy: its host)"):
        assert part in text, (part, text)
