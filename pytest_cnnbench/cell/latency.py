"""Step 5, latency: the cell timed beside its companions (the eager reference of its paired speedup,
a suite's own calls), measured again once where it was disturbed (``remeasure_reason``), with the
between-session and pace terms of its interval, its speedup, GPU compute time, and the figures handed
to pytest-benchmark. The timed loop itself is ``timing``'s."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Callable, Optional

import torch

from .. import progress, threadchoice
from .. import results as R
from ..backends.base import Prepared, device_events
from ..stats import (SESSION_HISTORY, UNSTABLE_CI, LatencyStats, Speedup, at_usual_pace, own_spread, pace_spread,
                     session_spread)
from ..pytestbenchmark import hand_to_benchmark
from ..timing import Companion, Timing, TimingRules, time_cell
from ..verdicts import own_spread_reason
from .context import CellContext, phase
from .inputs import Inputs
from .reference import REFERENCE, ReferenceCompanion


def remeasure_reason(stats: LatencyStats, disturbed: Optional[str], host_moved_it: Optional[bool] = None) -> Optional[str]:
    """Why a cell is measured a second time, or None: its own calls spread too wide, or something
    disturbed it (another process, a slow stretch beyond the session's). A whole session off its
    usual pace is not a reason: measuring again inside it would only repeat it."""
    if disturbed:
        return disturbed
    within = stats.ci95_within if stats.ci95_within is not None else stats.ci95_rel
    if own_spread(within, host_moved_it):
        return own_spread_reason(within, UNSTABLE_CI)
    return None


@dataclasses.dataclass
class Latency:
    """The cell's latency (``stats``, with its between-session and pace terms), the prepared model timed
    last (a re-measurement on 1 thread prepares it again), and each companion's figures: ``companions``
    by name, ``paired`` its time over the cell's, chunk by chunk (ratio, ±, chunks)."""

    stats: LatencyStats
    prepared: Prepared
    companions: dict[str, LatencyStats]
    paired: dict[str, tuple[float, float, int]]


@dataclasses.dataclass
class _Session:
    """One timed measurement of the cell (two where the first was disturbed)."""

    timing: Timing
    load: Any  # machine.Load over the timed calls
    disturbed: Optional[str]
    prepared: Prepared
    companions: dict[str, Companion]
    remeasured: Optional[dict[str, Any]] = None


def timing_rules(settings: Any) -> TimingRules:
    s = settings
    return TimingRules(s.warmup, s.min_rounds, s.max_rounds, s.max_time, s.target_ci, s.min_time)


def measure_latency(cell: CellContext, prepared: Prepared, inputs: Inputs, result: R.CellResult,
                    calls: Optional[dict[str, Callable[[], Any]]], reference: Optional[ReferenceCompanion],
                    benchmark: Any, again_on: Callable[[int], Prepared]) -> Latency:
    """Time the cell alone on the machine (the exclusive lock) and record its latency, throughput, load,
    speedup and pinning into the row. ``again_on(threads)`` prepares the model again for a re-measurement
    (the pipeline holds, and closes, what it prepares)."""
    rules = timing_rules(cell.settings)
    companions = {name: Companion(call) for name, call in (calls or {}).items()}
    if reference is not None:
        companions[REFERENCE] = reference.companion
    with phase(result.phases_s, "timing"), torch.inference_mode(), cell.lock.exclusive():
        session = _time_once_or_twice(cell, prepared, again_on, inputs.batch, rules, result, companions)
        hand_to_benchmark(benchmark, session.timing.seconds)
        stats = _with_history(cell, session, rules, result, reference)
        result.thread_pinning = threadchoice.pinning(session.prepared)  # as timed last (a re-measurement may move it)
        # Optional members of the protocol: a user's backend may have only run/bind/close.
        bind_device = getattr(session.prepared, "bind_device", None)
        device_call = bind_device(inputs.batch) if bind_device is not None else None
        if device_call is not None:
            time_on_device(cell, result, device_call, rules)
    result.latency_ms = stats
    result.throughput_ips = cell.spec.batch_size * 1000.0 / stats.p50
    return Latency(stats, session.prepared, session.timing.companions, session.timing.paired)


def _time_once_or_twice(cell: CellContext, prepared: Prepared, again_on: Callable[[int], Prepared], batch: torch.Tensor,
                        rules: TimingRules, result: R.CellResult, companions: dict[str, Companion]) -> _Session:
    """Time the cell beside its companions; measure it again once if its own measurement was disturbed:
    on 1 thread where other processes compete for the cores (the reference follows), else for twice as long."""
    from .. import machine

    beside = " beside eager" if REFERENCE in companions else ""
    progress.update(f"timing (batch {cell.spec.batch_size}{beside})")
    first = _timed_once(cell, prepared, batch, rules, companions)
    why = remeasure_reason(first.timing.stats, first.disturbed, host_moved_it(first.timing))
    if not why:
        return first
    threads = result.threads
    before = {"p50": first.timing.stats.p50, "ci95_within": first.timing.stats.ci95_within, "pace": first.load.pace,
              "threads": threads, "machine": first.load.as_dict(), "why": why}
    # Not under a thread sweep: there the count is the row's identity.
    if (cell.device == "cpu" and threads and threads > 1 and cell.spec.threads_requested is None
            and machine.busy_reasons(first.load.as_dict())):
        # Threads of one call wait on a sibling that other processes keep off a core.
        how = "on 1 thread (other processes compete for the cores)"
        prepared = again_on(1)
        if REFERENCE in companions:  # the reference follows: equal threads on both sides
            companions = {**companions, REFERENCE: dataclasses.replace(companions[REFERENCE], threads=1)}
    else:
        how = "for twice as long"
    progress.update(f"timing again {how} ({why})")
    second = _timed_once(cell, prepared, batch, rules.longer(), companions)
    second.remeasured = {"how": how, "first": before}
    # "before" is before the cell's first measurement
    second.load.load_before = before["machine"].get("load_before", second.load.load_before)
    return second


def _timed_once(cell: CellContext, prepared: Prepared, batch: torch.Tensor, rules: TimingRules,
                companions: dict[str, Companion]) -> _Session:
    from .. import machine

    monitor = machine.Monitor()
    timing = time_cell(prepared.bind(batch), rules, companions, monitor.tick,
                       top_up=REFERENCE if REFERENCE in companions else None)
    load = monitor.finish()
    load.pace = _pace(cell, timing.pace)
    load.pace_probe_us = statistics.median(timing.pace) * 1e6 if timing.pace else None
    return _Session(timing, load, machine.disturbance(load.as_dict()), prepared, companions)


def host_moved_it(timing: Timing) -> Optional[bool]:
    """Whether the host's drift explains the cell's spread (``stats.own_spread``). With an eager
    reference, drift cancels out of their paired ratio: a ratio that spreads under half as much as
    the cell says the host moved both. Without one, a pace probe that swung at least half as much
    says the same. None: nothing ran beside the cell's calls."""
    within = timing.stats.ci95_within or 0.0
    paired = timing.paired.get(REFERENCE)
    if paired is not None and math.isfinite(paired[1]):
        return paired[1] < within / 2
    if timing.probe_within is None:
        return None
    return timing.probe_within >= within / 2


def _with_history(cell: CellContext, session: _Session, rules: TimingRules, result: R.CellResult,
                  reference: Optional[ReferenceCompanion]) -> LatencyStats:
    """The cell's statistics with the between-session term (this cell, in this configuration, in earlier
    sessions on this machine) and the pace term; its paired speedup; this session joins the history."""
    from .. import machine, between_sessions

    timing, load, disturbed = session.timing, session.load, session.disturbed
    result.machine = load.as_dict()
    result.timing_window = {"start": timing.window[0], "end": timing.window[1]}
    parts = (*cell.choice_parts(), result.threads, result.provider)
    earlier = between_sessions.earlier_p50s(cell.bench.cache, parts)
    stats = timing.stats.with_sessions(session_spread(earlier), len(earlier), rules.target_ci,
                                       pace_spread(load.pace, machine.PACE_TOLERANCE), disturbed,
                                       host_moved_it=host_moved_it(timing))
    stats.remeasured = session.remeasured
    if REFERENCE in timing.paired and reference is not None:
        # Drift cancels out of a ratio, so any undisturbed session's speedup joins its history.
        result.speedup = _speedup(cell, timing.paired[REFERENCE], reference.label, parts,
                                  remember=disturbed is None, threads=session.companions[REFERENCE].threads)
    if at_usual_pace(load.pace, machine.PACE_TOLERANCE):
        # Every session at the machine's usual pace counts, disturbed ones too (leaving out the
        # sessions that strayed would understate how far sessions stray); one timed while the
        # machine ran slow owes its deviation to that, which its own pace term states.
        between_sessions.add_session(cell.bench.cache, parts, {"p50": stats.p50, "ci95_within": stats.ci95_within,
                                                     "stable": stats.stable, "pace": load.pace,
                                                     "others_cpu": result.machine["others_cpu"]}, SESSION_HISTORY)
    return stats


def _speedup(cell: CellContext, paired: tuple[float, float, int], reference: str, parts: tuple, remember: bool,
             threads: Optional[int] = None) -> Speedup:
    """The paired speedup with its interval: within this session (chunk by chunk) and between
    sessions (this cell's earlier paired speedups), in quadrature."""
    from .. import between_sessions

    value, within, chunks = paired
    # Its own history, beside the p50's. "equal threads": speedups timed with eager at its own
    # row's thread count (and, earlier, beside spinning ORT sessions) measured something else,
    # and must not widen today's.
    key = (*parts, "speedup over", reference, "paired at equal threads")
    earlier = between_sessions.earlier_p50s(cell.bench.cache, key)
    between = session_spread(earlier)
    total = math.sqrt(within ** 2 + between ** 2) if math.isfinite(within) else math.inf
    if remember:
        between_sessions.add_session(cell.bench.cache, key, {"p50": value, "ci95_within": within}, SESSION_HISTORY)
    return Speedup(value, total, True, reference, within, between, chunks, threads)


def _pace(cell: CellContext, probes: list[float]) -> Optional[float]:
    """How much slower than its usual the machine ran over these probes (None: no reference yet).
    The probes join this process's record, and its 10th percentile is remembered for later sessions."""
    from .. import machine, between_sessions

    bench = cell.bench
    if not bench.pace_loaded:
        machine.PACE.remembered = between_sessions.earlier_paces(bench.cache)
        bench.pace_loaded = True
    machine.PACE.add(probes)
    own = machine.PACE.own()
    if own is not None:
        between_sessions.remember_pace(bench.cache, own)
    return machine.pace_of(probes, machine.PACE.reference())


def time_on_device(cell: CellContext, result: R.CellResult, call: Callable[[], Any], rules: TimingRules) -> None:
    """Compute latency with the input already on the GPU, as trtexec's GPU compute time."""
    from ..gpu import time_device_calls
    from ..stats import latency_stats
    from ..timing import plan_timing

    progress.update("timing on the device")
    rounds = plan_timing(call, rules).rounds
    wall, device = time_device_calls(call, rounds, events=device_events(cell.backend))
    result.compute_latency_ms = latency_stats(wall, rules.target_ci).as_dict()
    if device:
        result.device_time_ms = latency_stats(device, rules.target_ci).as_dict()
