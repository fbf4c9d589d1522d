"""The timed loop (timing.py): plans, blocks, companions, the paired speedup and the one timer; the
configuration chooser (configchoice.py) and the pytest-benchmark adapter (pytestbenchmark.py)."""

from __future__ import annotations

import itertools
import math
import time

import pytest

from pytest_cnnbench import configchoice, timing


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_plan_spreads_short_calls_over_min_time_in_equal_blocks():
    rules = timing.TimingRules(warmup=2, min_rounds=50, max_rounds=400, max_time=1.0, target_ci=0.02, min_time=0.3)
    plan = timing.plan_timing(lambda: busy_wait(0.0002), rules)
    assert plan.blocks == timing.BLOCKS and plan.rounds % plan.blocks == 0 and plan.rounds <= 400 + plan.blocks
    assert plan.gap_s > 0 and plan.rewarm >= 1
    ticks = []
    result = timing.time_cell(lambda: busy_wait(0.0002), rules, on_block=lambda: ticks.append(1))
    assert len(result.seconds) == result.stats.rounds
    assert len(ticks) == result.plan.blocks
    assert result.stats.blocks == result.plan.blocks
    assert 0.25 <= result.stats.span_s <= 1.0  # the pauses spread the blocks over min_time, within the cap
    start, end = result.window
    assert end - start == pytest.approx(result.stats.span_s) and 0 <= time.time() - end < 60


def test_pauses_between_blocks_spin_rather_than_sleep():
    """A sleeping vCPU is woken wherever the host puts it (often beside a busy neighbour): the
    pauses keep the CPU, so the process's CPU time covers the timed loop's wall time."""
    rules = timing.TimingRules(warmup=2, min_rounds=50, max_rounds=200, max_time=1.0, target_ci=0.02, min_time=0.4)
    wall, cpu = time.perf_counter(), time.process_time()
    result = timing.time_cell(lambda: busy_wait(0.0002), rules)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.plan.gap_s > 0.01 and result.stats.span_s >= 0.35
    assert cpu >= 0.8 * wall, (cpu, wall)


def test_long_calls_get_no_pauses():
    rules = timing.TimingRules(warmup=1, min_rounds=30, max_rounds=60, max_time=0.2, min_time=0.05)
    plan = timing.plan_timing(lambda: busy_wait(0.002), rules)
    assert plan.gap_s == 0 and plan.rewarm == 0


def test_companions_run_at_their_own_thread_count_and_the_cells_is_restored():
    import torch

    threads = torch.get_num_threads()
    rules = timing.TimingRules(warmup=1, min_rounds=30, max_rounds=60, max_time=0.2, min_time=0.05)
    companion_threads, cell_threads = [], []

    def companion():
        companion_threads.append(torch.get_num_threads())
        busy_wait(0.0004)

    other = 1 if threads != 1 else 2
    result = timing.time_cell(lambda: cell_threads.append(torch.get_num_threads()) or busy_wait(0.0002), rules,
                              companions={"slower": timing.Companion(companion, threads=other)})
    stats = result.companions["slower"]
    assert stats.rounds == result.stats.rounds and stats.blocks == result.stats.blocks
    assert set(cell_threads) == {threads} and set(companion_threads) == {other}
    assert torch.get_num_threads() == threads
    speedup, half, chunks = result.paired["slower"]
    assert speedup == pytest.approx(2.0, rel=0.25) and chunks >= 3 and half < 0.25


def test_paired_speedup_cancels_drift_between_chunks():
    """The machine slows threefold every other 30 ms: chunk by chunk, the companion's time over the
    cell's is still the true ratio (0.5 here: the companion is twice as fast)."""
    started = time.perf_counter()

    def factor() -> float:
        return 3.0 if int((time.perf_counter() - started) / 0.03) % 2 else 1.0

    rules = timing.TimingRules(warmup=1, min_rounds=200, max_rounds=400, max_time=0.6, min_time=0.3)
    result = timing.time_cell(lambda: busy_wait(0.0004 * factor()), rules,
                              companions={"half": timing.Companion(lambda: busy_wait(0.0002 * factor()))})
    speedup, half, chunks = result.paired["half"]
    assert chunks >= 10
    assert speedup == pytest.approx(0.5, rel=0.1)


def test_fast_paired_calls_get_rounds_enough_for_chunks_of_chunk_s():
    rules = timing.TimingRules(warmup=1, min_rounds=50, max_rounds=5000, max_time=1.0, min_time=0.3)
    alone = timing.plan_timing(lambda: busy_wait(2e-5), rules)
    paired = timing.plan_timing(lambda: busy_wait(2e-5), rules, paired=True)
    assert alone.rounds < 1000 and paired.rounds >= 4000, (alone, paired)
    slow = timing.plan_timing(lambda: busy_wait(0.004), rules, paired=True)
    assert slow.rounds < 300  # a call longer than a chunk: nothing added


def test_a_paired_ratio_wider_than_the_target_gets_more_pairs():
    import random

    noise = random.Random(3)
    rules = timing.TimingRules(warmup=1, min_rounds=60, max_rounds=60, max_time=0.5, min_time=0.05)

    def run(top_up):
        return timing.time_cell(lambda: busy_wait(0.0004), rules, top_up=top_up,
                                companions={"noisy": timing.Companion(lambda: busy_wait(0.0004 * noise.uniform(0.3, 1.7)))})

    plain, topped = run(None), run("noisy")
    assert plain.paired["noisy"][1] > timing.PAIRED_TARGET_CI  # the premise: wider than the target
    assert topped.paired["noisy"][2] > plain.paired["noisy"][2]  # more chunks behind the ratio
    assert topped.paired["noisy"][1] < plain.paired["noisy"][1]
    assert topped.paired["noisy"][0] == pytest.approx(1.0, rel=0.15)
    # The cell's own figures come from its loop alone; its window covers the extra pairs.
    assert len(topped.seconds) == topped.stats.rounds == topped.plan.rounds
    assert topped.window[1] - topped.window[0] > plain.window[1] - plain.window[0]


def test_hand_to_benchmark_gives_pytest_benchmark_the_cells_calls(pytester):
    """Through the real fixture: its --benchmark-json holds the calls handed over, a re-measurement's
    replacing the first attempt's."""
    pytester.makepyfile(test_b="""
        from pytest_cnnbench.pytestbenchmark import hand_to_benchmark

        def test_it(benchmark):
            assert hand_to_benchmark(benchmark, [0.001] * 10)
            assert hand_to_benchmark(benchmark, [0.002] * 30)  # measured again
    """)
    result = pytester.runpytest_subprocess("-p", "no:cnnbench", "--benchmark-json=b.json", "-q")
    result.assert_outcomes(passed=1)
    import json

    stats = json.loads((pytester.path / "b.json").read_text())["benchmarks"][0]["stats"]
    assert stats["rounds"] == 30 and stats["median"] == pytest.approx(0.002)


def test_hand_to_benchmark_is_refused_by_a_disabled_fixture(pytester):
    pytester.makepyfile(test_b="""
        from pytest_cnnbench.pytestbenchmark import hand_to_benchmark

        def test_it(benchmark):
            assert not hand_to_benchmark(benchmark, [0.001] * 10)
    """)
    pytester.runpytest_subprocess("-p", "no:cnnbench", "--benchmark-disable", "-q").assert_outcomes(passed=1)


@pytest.mark.parametrize("b_seconds, expected", [(0.0005, "b"), (0.00098, "a"), (0.001, "a")])
def test_compare_interleaved_needs_a_clear_win_to_leave_the_default(b_seconds, expected):
    comparison = configchoice.choose_configuration({"a": lambda: busy_wait(0.001), "b": lambda: busy_wait(b_seconds)},
                                                   budget_s=1.5)
    assert comparison.choice == expected, comparison.verdict
    assert comparison.rounds >= 6
    ratio, lo, hi = comparison.ratios["b"]
    assert lo <= ratio <= hi
    assert set(comparison.as_dict()["medians_ms"]) == {"a", "b"}


def test_compare_interleaved_runs_before_hooks():
    seen = []
    configchoice.choose_configuration({1: lambda: busy_wait(1e-4), 2: lambda: busy_wait(1e-4)},
                                      before={1: lambda: seen.append(1), 2: lambda: seen.append(2)}, min_rounds=4, max_rounds=4)
    assert seen[:3] == [1, 2, 1] and seen.count(1) == seen.count(2) == 5  # one warm-up, four rounds (ABBA...)


def test_every_timed_path_goes_through_the_one_timer(monkeypatch):
    """The cell's loop, its companions, the thread probe and the GPU wall timer all take their
    figures from timing.timed: replace it, and every figure they report is its."""
    from pytest_cnnbench import gpu

    monkeypatch.setattr(timing, "timed", lambda call: (call(), 0.004)[1])
    rules = timing.TimingRules(warmup=1, min_rounds=30, max_rounds=60, max_time=0.2, min_time=0.05)
    result = timing.time_cell(lambda: busy_wait(1e-5), rules, companions={"c": timing.Companion(lambda: None)})
    assert set(result.seconds) == {0.004} and result.companions["c"].p50 == pytest.approx(4.0)
    comparison = configchoice.choose_configuration({1: lambda: None, 2: lambda: None}, min_rounds=2, max_rounds=2)
    assert set(comparison.medians_ms.values()) == {4.0}
    wall, device = gpu.time_device_calls(lambda: None, 5, events=False)
    assert wall == [0.004] * 5 and device is None


def test_thread_probe_of_slow_noisy_calls_decides_and_only_a_decision_is_remembered(tmp_path):
    """Two candidates whose calls take known times, as ResNet50 eager at 1 and 2 threads on a busy
    host: 100 ms, and 60 ms swinging 2.9x either way from call to call (log sd 0.88). Within a
    2 s budget they get about 11 rounds, too few to tell 0.6x from 1x through that swing (the old
    rule ended there undecided and kept 1 thread); the probe's rounds, not seconds, must decide."""
    from pytest_cnnbench import threadchoice, between_sessions
    from pytest_cnnbench.cache import ArtifactCache

    swing = itertools.cycle([math.exp(1.08), math.exp(-1.08), 1.0])
    calls = {1: lambda: time.sleep(0.100), 2: lambda: time.sleep(0.060 * next(swing))}
    comparison = threadchoice.probe(calls, lambda n: None)
    assert comparison.decided and comparison.choice == 2, comparison.verdict
    assert comparison.ratios[2][2] < 1 - configchoice.PROBE_MARGIN
    # An undecided probe keeps the default for this session only; a decision is remembered.
    cache, cell = ArtifactCache(tmp_path), ("model", "eager", 1, "fp32", "cpu", "mnist", (1, 28, 28))
    undecided = configchoice.ChoiceEvidence(1, {1: 100.0, 2: 90.0}, {2: (0.9, 0.7, 1.1)}, 20,
                                            "undecided after 20 rounds: kept 1", decided=False)
    assert not threadchoice.remember(cache, cell, 1, undecided)
    assert threadchoice.remembered(cache, cell) is None
    assert threadchoice.remember(cache, cell, 2, comparison)
    assert threadchoice.remembered(cache, cell) == 2
    # Choices remembered under the old rule (undecided probes stored as decisions) are not trusted.
    between_sessions.remember_choice(cache, "threads", ("other", *cell[1:]), 1, {"verdict": "undecided after 6 rounds: kept 1"})
    assert threadchoice.remembered(cache, ("other", *cell[1:])) is None
