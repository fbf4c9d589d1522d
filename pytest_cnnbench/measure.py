"""All measurement in one place: latency (through pytest-benchmark), host memory, accuracy, agreement.

Timing rules (see README, "How figures are measured"):

1. ``warmup`` untimed calls.
2. A pilot of at least ``PILOT_CALLS`` calls (or a tenth of the time cap) estimates the time
   per call and the spread of calls; from them follows the number of rounds that pins the
   median to ``target_ci``, bounded by ``min_rounds``/``max_rounds`` and by the ``max_time`` cap.
3. The rounds run through pytest-benchmark's pedantic mode, one call per round, each timed
   alone, in ``blocks`` equal blocks separated in time: when the calls alone would take less
   than ``min_time``, jittered (spinning) pauses between blocks (each followed by untimed re-warming
   calls) spread the blocks over ``min_time``, so they sample the machine at different
   moments rather than in one burst.
4. The stated spread ``ci95_rel`` is the 95% half-width of the p50, relative to it, from two
   parts added in quadrature: within this session (the block-bootstrap standard error of the
   median times Student's t for blocks - 1 degrees of freedom, never below the order-statistics
   half-width), and between sessions (``session_spread``: the spread of this cell's p50 over
   earlier sessions on this machine, pooled with a prior measured on a shared machine). A
   session's p50 also moves with things that stay fixed within a session (where a model's
   buffers landed, which ONNX Runtime session was built), which no within-session statistic sees.
5. A cell whose within-session half-width stays above ``UNSTABLE_CI`` is measured once more
   (longer, or on one thread when other processes compete for the cores); still wide, it is
   ``stable = False``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import statistics
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from .machine import UNSTABLE_CI, pace_probe  # UNSTABLE_CI re-exported: the threshold belongs with the timing rules

PILOT_CALLS = 30
BLOCKS = 20  # timed blocks per cell (19 degrees of freedom for the between-block spread)
MIN_BLOCK_CALLS = 3  # fewer calls than this per block: one block, order statistics only
REWARM_S = 0.002  # untimed calls after each pause: at least one, or about this long
GAP_JITTER = (0.5, 1.5)  # pauses vary by this factor, so blocks do not lock onto a periodic neighbour
BOOTSTRAP_RESAMPLES = 1000
# Between sessions: the prior for the standard deviation of log(p50) from session to session, and
# its weight in sessions. Measured on the shared 2-core machine this was built on: LeNet at batch
# size 1 on one thread, 8 separate processes each, sd 0.5% (eager), 1.1% (TorchScript), 1.1% (ONNX
# Runtime), while 8-second windows within one process varied 0.07-0.4%.
SESSION_PRIOR_SD = 0.01
SESSION_PRIOR_WEIGHT = 4
SESSION_HISTORY = 20  # earlier sessions kept per cell and configuration

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(dof: float) -> float:
    """Student's t, 97.5% quantile (two-sided 95%), for ``dof`` degrees of freedom."""
    if dof < 1:
        return math.inf
    if dof <= len(_T975):
        return _T975[int(dof) - 1]
    return 1.96 + 2.5 / dof  # within 0.002 of the exact value beyond 30


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


@dataclasses.dataclass
class LatencyStats:
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    stdev: float
    rounds: int
    ci95_rel: float  # 95% half-width of the p50 relative to it: within and between sessions, in quadrature
    converged: bool = True  # the within-session half-width reached the target (False: the cap came first)
    blocks: int = 1  # timed blocks, separated in time
    span_s: Optional[float] = None  # wall time from the first timed block's start to the last one's end
    ci95_within: Optional[float] = None  # this session: block bootstrap (or order statistics), the wider
    ci95_sessions: Optional[float] = None  # between sessions (None: not applied)
    ci95_pace: Optional[float] = None  # how far the machine's pace strayed from its usual during the cell (0: within tolerance)
    sessions: Optional[int] = None  # earlier sessions the between-session term rests on (0: the prior alone)
    stable: Optional[bool] = None  # ci95_rel <= UNSTABLE_CI (None: not judged)
    remeasured: Optional[dict[str, Any]] = None  # why and what the first attempt gave, when measured twice

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_sessions(self, half_width: float, sessions: int, target_ci: float = math.inf,
                      pace_term: float = 0.0) -> "LatencyStats":
        """Add the between-session term (and the pace term, see ``pace_spread``) and judge stability."""
        within = self.ci95_within if self.ci95_within is not None else self.ci95_rel
        total = math.sqrt(within ** 2 + half_width ** 2 + pace_term ** 2)
        return dataclasses.replace(self, ci95_rel=total, ci95_sessions=half_width, sessions=sessions, ci95_pace=pace_term,
                                   converged=within <= target_ci, stable=total <= UNSTABLE_CI)


def median_ci(sorted_values: list[float]) -> float:
    """Relative half-width of the median's distribution-free 95% CI (order statistics,
    normal approximation to the binomial); inf with too few values."""
    n = len(sorted_values)
    if n < 6:
        return math.inf
    median = statistics.median(sorted_values)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)))
    return max(median - sorted_values[lo], sorted_values[hi] - median) / median if median > 0 else math.inf


def block_bootstrap_ci(in_order: list[float], blocks: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Relative 95% half-width of the median of all values, from ``blocks`` equal consecutive blocks.

    Blocks are drawn with replacement and the median of the pooled calls recomputed; the
    standard error of those medians (scaled by sqrt(B/(B-1)), as a bootstrap over few clusters
    runs narrow) times Student's t for B-1 degrees of freedom is the half-width. Calls in one
    block share the machine's state (a neighbour's burst, the frequency), so the blocks, not
    the calls, are the independent units. A single disturbed block moves the pooled median
    little, which the mean of block medians would not forgive. 0 with fewer than 3 blocks.
    """
    if blocks < 3 or len(in_order) < blocks:
        return 0.0
    size = len(in_order) // blocks
    values = np.asarray(in_order[: size * blocks], dtype=np.float64).reshape(blocks, size)
    centre = float(np.median(values))
    if centre <= 0:
        return math.inf
    rng = np.random.default_rng(seed)
    medians = []
    chunk = max(1, min(resamples, 4_000_000 // values.size))  # bound the memory of one draw
    for done in range(0, resamples, chunk):
        picks = rng.integers(0, blocks, size=(min(chunk, resamples - done), blocks))
        medians.append(np.median(values[picks].reshape(len(picks), -1), axis=1))
    spread = float(np.std(np.concatenate(medians), ddof=1)) * math.sqrt(blocks / (blocks - 1))
    return t975(blocks - 1) * spread / centre


def block_median_ci(in_order: list[float]) -> float:
    """Relative 95% CI half-width from the medians of consecutive blocks (t on their mean).

    Kept for callers that have no block structure; the timed loop uses ``block_bootstrap_ci``.
    """
    n = len(in_order)
    blocks = 10 if n >= 100 else 5 if n >= 25 else 0
    if not blocks:
        return 0.0
    size = n // blocks
    medians = [statistics.median(in_order[i * size:(i + 1) * size]) for i in range(blocks)]
    centre = statistics.median(in_order)
    return t975(blocks - 1) * statistics.stdev(medians) / math.sqrt(blocks) / centre if centre > 0 else math.inf


def latency_stats(seconds: list[float], target_ci: float = math.inf, blocks: int = 0,
                  span_s: Optional[float] = None) -> LatencyStats:
    """Summarize per-call times (seconds, in the order measured) in milliseconds.

    ``blocks``: the calls came in that many equal blocks separated in time (the block
    bootstrap applies); 0: no known block structure (ten consecutive chunks stand in).
    """
    in_order = [s * 1000.0 for s in seconds]
    ms = sorted(in_order)
    n = len(ms)
    if n == 1:
        v = ms[0]
        return LatencyStats(v, v, v, v, v, v, 0.0, 1, math.inf, False, 1, span_s, math.inf)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    if blocks:
        ci_blocks = block_bootstrap_ci(in_order, blocks) if blocks >= 3 else 0.0
    else:
        ci_blocks = block_median_ci(in_order)
    ci = max(median_ci(ms), ci_blocks)
    return LatencyStats(
        mean=statistics.fmean(ms), p50=statistics.median(ms), p90=cuts[89], p99=cuts[98], min=ms[0], max=ms[-1],
        stdev=statistics.stdev(ms), rounds=n, ci95_rel=ci, converged=ci <= target_ci, blocks=max(blocks, 1),
        span_s=span_s, ci95_within=ci,
    )


def session_spread(earlier_p50s: list[float], prior_sd: float = SESSION_PRIOR_SD,
                   prior_weight: float = SESSION_PRIOR_WEIGHT) -> float:
    """Relative 95% half-width for how far a session's p50 strays from session to session.

    The variance of log(p50) over the earlier sessions (the latest ``SESSION_HISTORY``) is
    pooled with a prior of ``prior_sd`` worth ``prior_weight`` sessions, and the half-width is
    Student's t for the pooled degrees of freedom times its square root: with no history it
    is t(4) x 1% = 2.8%; it follows the machine as sessions accumulate.
    """
    logs = [math.log(v) for v in earlier_p50s[-SESSION_HISTORY:] if v and v > 0]
    squares, dof = 0.0, 0
    if len(logs) > 1:
        centre = statistics.fmean(logs)
        squares, dof = sum((x - centre) ** 2 for x in logs), len(logs) - 1
    variance = (prior_weight * prior_sd ** 2 + squares) / (prior_weight + dof)
    return t975(prior_weight + dof) * math.sqrt(variance)


def pace_spread(pace: Optional[float], tolerance: float = 0.10) -> float:
    """The spread a cell's p50 owes to the machine running off its usual pace: the pace's
    deviation (pace 1.6 -> 0.6) once beyond ``tolerance`` (the probe's own noise), else 0.

    A cell timed while the whole machine ran 1.6x slower has a p50 about that much above what
    a session at the usual pace measures, however tight its blocks agree."""
    if not pace or pace <= 0:
        return 0.0
    deviation = max(pace, 1 / pace) - 1
    return deviation if deviation > tolerance else 0.0


def at_usual_pace(pace: Optional[float], tolerance: float = 0.10) -> bool:
    """Whether a session may join the between-session history: its pace is known and within
    ``tolerance`` of the usual. A pace that could not be judged (no reference yet) vouches for
    nothing: such a session, timed 3x slow on a machine loaded 4 deep, once made later sessions
    state ±94%."""
    return pace is not None and pace > 0 and not pace_spread(pace, tolerance)


def _timed_calls(call: Callable[[], Any], count: int, budget: float) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < count or (time.perf_counter() < deadline and len(times) < 10 * count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def spin(seconds: float) -> None:
    """Pause by spinning, not sleeping. Measured on the 2-vCPU KVM guest this was built on: after
    a sleep, 5-17 of 20 LeNet blocks ran 1.5-2x slow (a woken vCPU lands wherever the host puts
    it); after a spin of the same length, 1-5 of 20 (``scripts/pause_experiment.py``)."""
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


def plan_timing(call: Callable[[], Any], rules: TimingRules) -> Plan:
    """Warm up, run the pilot, and plan the timed loop (rounds, blocks, pauses) within the cap."""
    for _ in range(rules.warmup):
        call()
    pilot = sorted(_timed_calls(call, PILOT_CALLS, 0.1 * rules.max_time))
    per_call = max(statistics.median(pilot), 1e-9)
    ci = median_ci(pilot)
    wanted = rules.max_rounds if not math.isfinite(ci) else math.ceil(len(pilot) * (ci / rules.target_ci) ** 2)
    fits = int(0.9 * rules.max_time / per_call)
    # Never fewer rounds than the pilot had: a quiet pilot must not shrink the real sample.
    rounds = max(rules.min_rounds, min(max(wanted, len(pilot)), rules.max_rounds, fits))
    blocks = min(rules.blocks, rounds // MIN_BLOCK_CALLS)
    if blocks < 3:
        return Plan(rounds, 1, 0.0, 0, per_call)
    rounds = blocks * math.ceil(rounds / blocks)
    span = min(rules.min_time, 0.9 * rules.max_time)
    gap = max(0.0, span - rounds * per_call) / (blocks - 1)
    rewarm = max(1, math.ceil(REWARM_S / per_call)) if gap > 0 else 0
    return Plan(rounds, blocks, gap, rewarm, per_call)


def plan_rounds(call: Callable[[], Any], rules: TimingRules) -> int:
    """Warm up, run the pilot, and return how many timed rounds to run (see ``plan_timing``)."""
    return plan_timing(call, rules).rounds


CHUNK_S = 0.003  # the pace probe and companions run before each chunk of about this long (or one call)


class BlockSchedule:
    """Runs between timed rounds (pytest-benchmark's untimed ``setup``): at each block's start,
    the pause, the load sample (``on_block``) and the re-warming calls; before each chunk of
    rounds, the pace probe and the companions.

    The cell's rounds come in chunks of about ``CHUNK_S`` (one call for slow models). Before
    each chunk the machine's pace is probed (``machine.pace_probe``, a fixed loop, about
    60 us), so the cell knows how fast the machine ran while it was timed; and every
    companion (other calls timed in the same loop as the cell) runs a chunk of the same
    size, so the machine's drift, even from one millisecond to the next, affects both alike
    (the self-checks compare the plugin with a bare loop and with hand-tuned sessions this
    way). Where calls are short, one untimed call precedes each chunk after the switch
    (thread pools wake, caches refill); torch's thread count is restored after companions.
    """

    def __init__(self, call: Callable[[], Any], plan: Plan, companions: Optional[dict[str, Callable[[], Any]]] = None,
                 on_block: Optional[Callable[[], None]] = None, seed: int = 0) -> None:
        self.call, self.plan = call, plan
        self.companions = dict(companions or {})
        self.companion_times: dict[str, list[float]] = {name: [] for name in self.companions}
        self.pace: list[float] = []  # pace probe before each chunk, seconds
        self.on_block = on_block
        self.rng = random.Random(seed)
        self.index = 0
        self.started: Optional[float] = None
        self.chunk = max(1, min(plan.block_size, math.ceil(CHUNK_S / plan.per_call_s)))
        self.switch_rewarm = 1 if plan.per_call_s < 0.005 else 0

    def __call__(self) -> None:
        i, self.index = self.index, self.index + 1
        if i >= self.plan.rounds:
            return
        rewarm = 0
        if i % self.plan.block_size == 0:
            if i and self.plan.gap_s > 0:
                spin(self.plan.gap_s * self.rng.uniform(*GAP_JITTER))
                rewarm = self.plan.rewarm
            if self.on_block is not None:
                self.on_block()
        if (i % self.plan.block_size) % self.chunk == 0:
            self.pace.append(pace_probe())
            size = min(self.chunk, self.plan.block_size - i % self.plan.block_size)
            threads = torch.get_num_threads()
            for name, companion in self.companions.items():
                times = self.companion_times[name]
                for _ in range(max(rewarm, self.switch_rewarm)):
                    companion()
                for _ in range(size):
                    started = time.perf_counter()
                    companion()
                    times.append(time.perf_counter() - started)
            if torch.get_num_threads() != threads:  # setting it, even unchanged, disturbs the thread pool
                torch.set_num_threads(threads)
            rewarm = max(rewarm, self.switch_rewarm)
        for _ in range(rewarm):
            self.call()
        if i == 0:
            self.started = time.perf_counter()

    def span(self) -> Optional[float]:
        return None if self.started is None else time.perf_counter() - self.started

    def chunks(self) -> list[tuple[int, int]]:
        """(start, end) round indices of the chunks that alternated with the companions."""
        out = []
        for block in range(0, self.plan.rounds, self.plan.block_size):
            end = min(block + self.plan.block_size, self.plan.rounds)
            out += [(start, min(start + self.chunk, end)) for start in range(block, end, self.chunk)]
        return out


@dataclasses.dataclass
class Timing:
    stats: LatencyStats
    plan: Plan
    companions: dict[str, LatencyStats]
    # Per companion: the cell's time over the companion's, chunk by chunk (the median of the
    # ratios of chunk medians, which drift between chunks cannot bias), and the number of chunks.
    paired: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    pace: list[float] = dataclasses.field(default_factory=list)  # the pace probe before each chunk, seconds


def _summarize(schedule: BlockSchedule, seconds: list[float], rules: TimingRules) -> Timing:
    plan = schedule.plan
    blocks = plan.blocks if plan.blocks >= 3 else 0
    stats = latency_stats(seconds, rules.target_ci, blocks=blocks, span_s=schedule.span())
    companions, paired = {}, {}
    for name, times in schedule.companion_times.items():
        if not times:
            continue
        companions[name] = latency_stats(times, rules.target_ci, blocks=blocks)
        if len(times) == len(seconds):
            logs = [math.log(statistics.median(seconds[a:b]) / statistics.median(times[a:b]))
                    for a, b in schedule.chunks() if min(seconds[a:b]) > 0 and min(times[a:b]) > 0]
            if logs:
                paired[name] = (math.exp(statistics.median(logs)), len(logs))
    return Timing(stats, plan, companions, paired, list(schedule.pace))


def time_with_benchmark(benchmark: Any, call: Callable[[], Any], rules: TimingRules,
                        companions: Optional[dict[str, Callable[[], Any]]] = None,
                        on_block: Optional[Callable[[], None]] = None) -> Optional[Timing]:
    """Time ``call`` through pytest-benchmark's fixture (pedantic mode, the schedule as its
    untimed setup); None when benchmarks are disabled."""
    if getattr(benchmark, "disabled", False):
        call()
        return None
    plan = plan_timing(call, rules)
    schedule = BlockSchedule(call, plan, companions, on_block)
    benchmark.pedantic(call, setup=schedule, rounds=plan.rounds, iterations=1, warmup_rounds=0)
    return _summarize(schedule, list(benchmark.stats.stats.data), rules)


def time_again(benchmark: Any, call: Callable[[], Any], rules: TimingRules,
               companions: Optional[dict[str, Callable[[], Any]]] = None,
               on_block: Optional[Callable[[], None]] = None) -> Timing:
    """A second measurement of a cell whose fixture has already been used: the same schedule and
    per-call timer, and its rounds replace the first attempt's in the fixture's statistics (so
    pytest-benchmark's table and ``--benchmark-json`` show the figures the cell reports)."""
    from pytest_benchmark.stats import Stats

    plan = plan_timing(call, rules)
    schedule = BlockSchedule(call, plan, companions, on_block)
    seconds = []
    for _ in range(plan.rounds):
        schedule()
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    fresh = Stats()
    for value in seconds:
        fresh.update(value)
    benchmark.stats.stats = fresh
    return _summarize(schedule, seconds, rules)


# -- choosing between configurations (threads, TorchScript variants) -----------------------------
PROBE_MARGIN = 0.05  # another configuration must be this much faster than the default, with 95% confidence


@dataclasses.dataclass
class Comparison:
    """The outcome of ``compare_interleaved``: the choice and the evidence for it."""

    choice: Any
    medians_ms: dict[Any, float]  # median of each candidate's block medians
    ratios: dict[Any, tuple[float, float, float]]  # candidate -> (ratio to the default, 95% low, high)
    rounds: int
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "medians_ms": {str(k): v for k, v in self.medians_ms.items()},
                "ratios": {str(k): list(v) for k, v in self.ratios.items()}, "rounds": self.rounds, "verdict": self.verdict}


def compare_interleaved(calls: dict[Any, Callable[[], Any]], before: Optional[dict[Any, Callable[[], Any]]] = None,
                        margin: float = PROBE_MARGIN, min_rounds: int = 6, max_rounds: int = 60, budget_s: float = 2.0,
                        block_s: float = 0.01) -> Comparison:
    """Compare configurations in alternating blocks (A B B A A B ...), one block median per
    candidate and round, until each candidate is told apart from the first (the default, the
    configuration robust under contention) or the budget runs out.

    A candidate replaces the default only when it is clearly faster: the 95% confidence
    interval of its paired ratio (geometric mean over rounds of its block median over the
    default's) lies wholly below ``1 - margin``. Undecided at the cap means the default.
    ``before[key]`` runs before each of that candidate's blocks (e.g. set torch's thread count).
    """
    keys = list(calls)
    default = keys[0]
    before = before or {}

    def prime(key: Any) -> None:
        hook = before.get(key)
        if hook is not None:
            hook()

    per_call = {}
    for key in keys:
        prime(key)
        warm = _timed_calls(calls[key], 3, 0.05)
        per_call[key] = max(statistics.median(warm), 1e-9)
    if len(keys) == 1:
        return Comparison(default, {default: per_call[default] * 1000}, {}, 0, "only candidate")
    size = max(1, min(1000, int(block_s / max(per_call.values()))))
    rewarm = 1 if max(per_call.values()) < 0.005 else 0
    medians: dict[Any, list[float]] = {key: [] for key in keys}
    deadline = time.perf_counter() + budget_s
    ratios: dict[Any, tuple[float, float, float]] = {}
    rounds = 0
    while rounds < max_rounds:
        for key in keys if rounds % 2 == 0 else keys[::-1]:
            prime(key)
            call = calls[key]
            for _ in range(rewarm):
                call()
            times = []
            for _ in range(size):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            medians[key].append(statistics.median(times))
        rounds += 1
        if rounds < min_rounds:
            continue
        ratios = {key: _paired_ratio(medians[key], medians[default]) for key in keys[1:]}
        undecided = [key for key, (_, lo, hi) in ratios.items() if lo < 1 - margin < hi]
        if not undecided or time.perf_counter() > deadline:
            break
    faster = [key for key, (_, _, hi) in ratios.items() if hi < 1 - margin]
    overall = {key: statistics.median(values) * 1000 for key, values in medians.items()}
    if faster:
        choice = min(faster, key=lambda k: overall[k])
        verdict = f"{choice} clearly faster ({ratios[choice][0]:.2f}x the time of {default}, 95% up to {ratios[choice][2]:.2f}x)"
    else:
        choice = default
        undecided = [key for key, (_, lo, hi) in ratios.items() if lo < 1 - margin < hi]
        verdict = (f"undecided after {rounds} rounds: kept {default}" if undecided
                   else f"no candidate clearly faster than {default}")
    return Comparison(choice, overall, ratios, rounds, verdict)


def _paired_ratio(values: list[float], reference: list[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio of paired values with its 95% interval (t on the log ratios)."""
    logs = [math.log(a / b) for a, b in zip(values, reference) if a > 0 and b > 0]
    n = len(logs)
    if n < 2:
        return (math.exp(logs[0]) if logs else 1.0, 0.0, math.inf)
    centre = statistics.fmean(logs)
    half = t975(n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def probe(call: Callable[[], Any], warmup_s: float = 0.1, measure_s: float = 0.25, min_calls: int = 5) -> float:
    """Median seconds per call after a short warm-up (one candidate alone; kept for callers
    outside the harness: the harness compares candidates with ``compare_interleaved``)."""
    _timed_calls(call, 3, warmup_s)
    return statistics.median(_timed_calls(call, min_calls, measure_s))


def fastest(timings: dict[Any, float], margin: float = 0.10) -> Any:
    """The first (default) variant unless another is more than ``margin`` faster (kept for
    callers outside the harness; see ``compare_interleaved``)."""
    names = list(timings)
    best = min(names, key=timings.get)
    return best if timings[best] < (1 - margin) * timings[names[0]] else names[0]


class HostMemory:
    """Peak resident memory of this process over a span.

    On Linux the kernel's high-water mark (VmHWM) is reset at the start through
    /proc/self/clear_refs, so the peak belongs to the span and costs nothing to track.
    Elsewhere it falls back to getrusage's lifetime peak.
    """

    def __init__(self) -> None:
        self.start_mb = self.peak_mb = current_rss_mb()
        self.span_exact = False

    def __enter__(self) -> "HostMemory":
        self.start_mb = current_rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.span_exact = True
        except OSError:
            self.span_exact = False
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = max(peak_rss_mb(), self.start_mb)

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


def _status_field(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    value = _status_field("VmRSS")
    if value is not None:
        return value
    return peak_rss_mb()


def peak_rss_mb() -> float:
    value = _status_field("VmHWM")
    if value is not None:
        return value
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if os.uname().sysname == "Darwin" else peak / 1024.0


@dataclasses.dataclass
class Accuracy:
    logits: torch.Tensor
    top1: float
    top5: Optional[float]
    samples: int


def evaluate(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             num_classes: Optional[int] = None) -> Accuracy:
    """Run every sample through ``run`` in large batches; top-1/top-5 as fractions."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out = run(batch)
        expected = (len(batch), num_classes if num_classes is not None else (out.shape[-1] if out.ndim else 0))
        if tuple(out.shape) != expected:
            raise RuntimeError(f"backend returned logits of shape {tuple(out.shape)} for {len(batch)} samples; expected {expected}")
        chunks.append(out.float())
    logits = torch.cat(chunks)
    return accuracy_from_logits(logits, labels)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    top1 = float((logits.argmax(1) == labels).float().mean())
    top5 = None
    if logits.shape[1] >= 5:
        top5 = float((logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean())
    return Accuracy(logits, top1, top5, len(labels))


@dataclasses.dataclass
class Agreement:
    rel_err: float  # max |logits - reference| / max |reference|
    top1_agree: float  # fraction of samples whose top-1 class matches the reference
    meaningful: bool  # False when the reference predicts one class for (nearly) everything
    distinct_predictions: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> Agreement:
    ref = reference.float()
    scale = float(ref.abs().max()) or 1.0
    rel = float((logits.float() - ref).abs().max()) / scale
    ref_top1 = ref.argmax(1)
    agree = float((logits.argmax(1) == ref_top1).float().mean())
    distinct = int(ref_top1.unique().numel())
    # With one dominant class, top-1 agreement is trivially ~100% and tells nothing.
    dominant = float(torch.bincount(ref_top1).max()) / len(ref_top1)
    return Agreement(rel, agree, distinct > 1 and dominant < 0.5, distinct)
