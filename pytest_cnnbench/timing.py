"""The timed loop: how a cell's calls are timed, and the one function that times a call.

Timing rules (docs/measurement.md):

1. ``warmup`` untimed calls.
2. A pilot of at least ``PILOT_CALLS`` calls (or a tenth of the time cap) estimates the time
   per call and the spread of calls; from them follows the number of rounds that pins the
   median to ``target_ci``, bounded by ``min_rounds``/``max_rounds`` and by the ``max_time`` cap.
3. The rounds run one call each, each timed alone (``timed``), in ``blocks`` equal blocks
   separated in time: when the calls alone would take less than ``min_time``, jittered
   (spinning) pauses between blocks (each followed by untimed re-warming calls) spread the
   blocks over ``min_time``, so they sample the machine at different moments.
4. Before each chunk of about ``CHUNK_S`` of the cell's calls, the pace probe runs, and so do
   the companions (the reference the cell's speedup is measured against, the self-checks'
   twins), as many calls as the chunk has: the cell and its reference alternate chunk by
   chunk, so the machine's drift cancels out of their ratio.

The figures are handed to pytest-benchmark afterwards (``pytestbenchmark.hand_to_benchmark``), so
its table and ``--benchmark-json`` show what the cell reports, and timing works where
pytest-benchmark is off (under pytest-xdist). Choosing between configurations by timing them
against each other is ``configchoice``'s; its calls, too, are timed by ``timed`` here.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from typing import Any, Callable, Optional

from . import progress
from .machine import pace_probe
from .stats import LatencyStats, block_bootstrap_ci, latency_stats, median_ci, paired_speedup

PILOT_CALLS = 30
BLOCKS = 20  # timed blocks per cell (19 degrees of freedom for the between-block spread)
MIN_BLOCK_CALLS = 3  # fewer calls than this per block: one block, order statistics only
REWARM_S = 0.002  # untimed calls after each pause: at least one, or about this long
GAP_JITTER = (0.5, 1.5)  # pauses vary by this factor, so blocks do not lock onto a periodic neighbour
CHUNK_S = 0.003  # the pace probe and companions run before each chunk of about this long (or one call)
MIN_CHUNKS_PER_BLOCK = 5  # fast calls: chunks shorter than CHUNK_S rather than fewer than this per block
PAIRED_MIN_ROUNDS = 120  # a cell timed beside a reference: enough chunk pairs for a speedup within a few %
# A paired speedup whose within-session half-width is wider than this gets more chunk pairs, in extra
# blocks (at most as many as the loop had): with the 2.8% between-session prior, 3.5% keeps the
# stated interval under 5% (docs/measurement.md, "Paired speedup").
PAIRED_TARGET_CI = 0.035


def timed(call: Callable[[], Any]) -> float:
    """Seconds one call takes: the harness's only timer (every figure it reports comes from here)."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class TimingRules:
    warmup: int = 10
    min_rounds: int = 50
    max_rounds: int = 5000
    max_time: float = 5.0  # cap on the timed loop (calls and pauses), seconds
    target_ci: float = 0.02  # enough rounds to pin the median within +-2% (within the session)
    min_time: float = 3.0  # the timed blocks span at least this long (capped by max_time)
    blocks: int = BLOCKS

    def longer(self, factor: float = 2.0) -> "TimingRules":
        """The rules of a re-measurement: ``factor`` times the time, span and rounds."""
        return dataclasses.replace(self, min_rounds=int(self.min_rounds * factor), max_rounds=int(self.max_rounds * factor),
                                   max_time=self.max_time * factor, min_time=self.min_time * factor)


@dataclasses.dataclass(frozen=True)
class Companion:
    """A call timed alongside the cell, chunk by chunk; ``threads``: torch's thread count it runs at
    (None: the cell's)."""

    call: Callable[[], Any]
    threads: Optional[int] = None


def timed_calls(call: Callable[[], Any], count: int, budget: float) -> list[float]:
    """At least ``count`` calls, more while ``budget`` seconds last (at most ten times as many), each ``timed``."""
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < count or (time.perf_counter() < deadline and len(times) < 10 * count):
        times.append(timed(call))
    return times


def spin(seconds: float) -> None:
    """Pause by spinning, not sleeping: a woken vCPU lands wherever the host puts it, and the blocks
    after a sleep ran slow more often (docs/measurement.md, "Latency"; ``scripts/pause_experiment.py``)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a cell's timed loop runs: ``rounds`` calls in ``blocks`` equal blocks, ``gap_s`` apart
    (jittered), ``rewarm`` untimed calls after each pause."""

    rounds: int
    blocks: int
    gap_s: float
    rewarm: int
    per_call_s: float

    @property
    def block_size(self) -> int:
        return self.rounds // self.blocks


def plan_timing(call: Callable[[], Any], rules: TimingRules, paired: bool = False) -> Plan:
    """Warm up, run the pilot, and plan the timed loop (rounds, blocks, pauses) within the cap.
    ``paired``: the cell alternates with companions; fast calls then get rounds enough for chunks of
    ``CHUNK_S``, since a chunk of a few very fast calls gives a noisy ratio (docs/measurement.md)."""
    for _ in range(rules.warmup):
        call()
    pilot = sorted(timed_calls(call, PILOT_CALLS, 0.1 * rules.max_time))
    per_call = max(statistics.median(pilot), 1e-9)
    ci = median_ci(pilot)
    wanted = rules.max_rounds if not math.isfinite(ci) else math.ceil(len(pilot) * (ci / rules.target_ci) ** 2)
    fits = int(0.9 * rules.max_time / per_call)
    # Never fewer rounds than the pilot had: a quiet pilot must not shrink the real sample.
    rounds = max(rules.min_rounds, min(max(wanted, len(pilot)), rules.max_rounds, fits))
    if paired:
        chunks_fill = math.ceil(rules.blocks * MIN_CHUNKS_PER_BLOCK * CHUNK_S / per_call)
        rounds = max(rounds, min(chunks_fill, rules.max_rounds, fits))
    blocks = min(rules.blocks, rounds // MIN_BLOCK_CALLS)
    if blocks < 3:
        return Plan(rounds, 1, 0.0, 0, per_call)
    rounds = blocks * math.ceil(rounds / blocks)
    span = min(rules.min_time, 0.9 * rules.max_time)
    gap = max(0.0, span - rounds * per_call) / (blocks - 1)
    rewarm = max(1, math.ceil(REWARM_S / per_call)) if gap > 0 else 0
    return Plan(rounds, blocks, gap, rewarm, per_call)


def _torch_threads() -> Optional[Any]:
    import sys

    return sys.modules.get("torch")  # the companions' thread counts are torch's; no torch, nothing to set


class BlockSchedule:
    """Runs before each timed round: at each block's start, the pause, the load sample
    (``on_block``) and the re-warming calls; before each chunk of rounds, the pace probe and
    the companions, as many calls as the chunk has, each timed by ``timed``."""

    def __init__(self, call: Callable[[], Any], plan: Plan, companions: Optional[dict[str, Companion]] = None,
                 on_block: Optional[Callable[[], None]] = None, seed: int = 0) -> None:
        self.call, self.plan = call, plan
        self.companions = dict(companions or {})
        self.companion_times: dict[str, list[float]] = {name: [] for name in self.companions}
        self.pace: list[float] = []  # pace probe before each chunk, seconds
        self.on_block = on_block
        self.rng = random.Random(seed)
        self.index = 0
        # At least MIN_CHUNKS_PER_BLOCK chunks a block: the paired ratio rests on the chunks.
        self.chunk = max(1, min(plan.block_size // MIN_CHUNKS_PER_BLOCK or 1, math.ceil(CHUNK_S / plan.per_call_s)))
        self.switch_rewarm = 1 if plan.per_call_s < 0.005 else 0
        self.torch = _torch_threads() if any(c.threads for c in self.companions.values()) else None

    def __call__(self) -> None:
        i, self.index = self.index, self.index + 1
        if i >= self.plan.rounds:
            return
        rewarm = 0
        in_block = i % self.plan.block_size
        if in_block == 0:
            if i:  # between blocks: the pause and re-warming calls that follow absorb a terminal write
                progress.update(done=i // self.plan.block_size, total=self.plan.blocks, detail="timed blocks")
            if i and self.plan.gap_s > 0:
                spin(self.plan.gap_s * self.rng.uniform(*GAP_JITTER))
                rewarm = self.plan.rewarm
            if self.on_block is not None:
                self.on_block()
        if in_block % self.chunk == 0:
            self.pace.append(pace_probe())
            size = min(self.chunk, self.plan.block_size - in_block)
            threads = self.torch.get_num_threads() if self.torch is not None else None
            for name, companion in self.companions.items():
                switched = False
                if self.torch is not None and companion.threads and self.torch.get_num_threads() != companion.threads:
                    self.torch.set_num_threads(companion.threads)
                    switched = True
                times = self.companion_times[name]
                for _ in range(max(rewarm, self.switch_rewarm, 1 if switched else 0)):
                    companion.call()
                for _ in range(size):
                    times.append(timed(companion.call))
            # Setting the thread count, even unchanged, disturbs torch's pool: only when it changed.
            if self.torch is not None and self.torch.get_num_threads() != threads:
                self.torch.set_num_threads(threads)
            if self.companions:
                rewarm = max(rewarm, self.switch_rewarm)
        for _ in range(rewarm):
            self.call()

    def chunks(self) -> list[tuple[int, int, int]]:
        """(block, start, end) round indices of the chunks that alternated with the companions."""
        out = []
        for block, first in enumerate(range(0, self.plan.rounds, self.plan.block_size)):
            end = min(first + self.plan.block_size, self.plan.rounds)
            out += [(block, start, min(start + self.chunk, end)) for start in range(first, end, self.chunk)]
        return out


@dataclasses.dataclass
class Timing:
    stats: LatencyStats
    plan: Plan
    seconds: list[float]  # the cell's calls, in the order timed
    window: tuple[float, float]  # Unix time of the first timed call's start and the last one's end
    companions: dict[str, LatencyStats]
    # Per companion: (its time over the cell's, chunk by chunk: the cell's speedup over it;
    # the 95% relative half-width within this session; chunks). See ``stats.paired_speedup``.
    paired: dict[str, tuple[float, float, int]] = dataclasses.field(default_factory=dict)
    pace: list[float] = dataclasses.field(default_factory=list)  # the pace probe before each chunk, seconds
    probe_within: Optional[float] = None  # the pace probe's own within-session spread (as the cell's, by blocks)


def _run_loop(call: Callable[[], Any], schedule: BlockSchedule) -> tuple[list[float], float, float]:
    """The timed rounds of one schedule: (the cell's call times, Unix start, span in seconds)."""
    seconds: list[float] = []
    schedule()
    started_unix, started = time.time(), time.perf_counter()
    seconds.append(timed(call))
    for _ in range(schedule.plan.rounds - 1):
        schedule()
        seconds.append(timed(call))
    return seconds, started_unix, time.perf_counter() - started


def time_cell(call: Callable[[], Any], rules: TimingRules, companions: Optional[dict[str, Companion]] = None,
              on_block: Optional[Callable[[], None]] = None, top_up: Optional[str] = None) -> Timing:
    """Plan and run the timed loop of ``call`` (with its companions), and summarize it.

    ``top_up``: the companion whose paired ratio must reach ``PAIRED_TARGET_CI``; when it is wider,
    the cell and that companion alternate in extra blocks planned as the loop's, and the ratio rests
    on all chunks. The cell's own statistics come from the loop alone."""
    plan = plan_timing(call, rules if not companions else
                       dataclasses.replace(rules, min_rounds=max(rules.min_rounds, PAIRED_MIN_ROUNDS)), bool(companions))
    schedule = BlockSchedule(call, plan, companions, on_block)
    seconds, started_unix, span = _run_loop(call, schedule)
    blocks = plan.blocks if plan.blocks >= 3 else 0
    stats = latency_stats(seconds, rules.target_ci, blocks=blocks, span_s=span)
    out, paired = {}, {}
    chunks = schedule.chunks()
    for name, times in schedule.companion_times.items():
        if not times:
            continue
        out[name] = latency_stats(times, rules.target_ci, blocks=blocks)
        if len(times) == len(seconds):
            found = paired_speedup(seconds, times, chunks)
            if found is not None:
                paired[name] = found
    end_unix = started_unix + span
    if top_up in paired and blocks and paired[top_up][1] > PAIRED_TARGET_CI:
        more = min(plan.blocks, math.ceil(plan.blocks * ((paired[top_up][1] / PAIRED_TARGET_CI) ** 2 - 1)))
        progress.update(f"more pairs for the speedup (±{paired[top_up][1]:.1%} > ±{PAIRED_TARGET_CI:.1%})")
        extra = BlockSchedule(call, dataclasses.replace(plan, rounds=more * plan.block_size, blocks=more),
                              {top_up: schedule.companions[top_up]}, on_block, seed=1)
        extra_seconds, extra_unix, extra_span = _run_loop(call, extra)
        offset = len(seconds)
        extra_chunks = [(plan.blocks + block, offset + start, offset + end) for block, start, end in extra.chunks()]
        found = paired_speedup(seconds + extra_seconds, schedule.companion_times[top_up] + extra.companion_times[top_up],
                               chunks + extra_chunks)
        if found is not None:
            paired[top_up] = found
        end_unix = extra_unix + extra_span
    window = (started_unix, end_unix)
    probes = list(schedule.pace)
    per_block = len(probes) // plan.blocks if plan.blocks >= 3 else 0
    probe_within = block_bootstrap_ci(probes[: per_block * plan.blocks], plan.blocks) if per_block else None
    return Timing(stats, plan, seconds, window, out, paired, probes, probe_within)
