"""How busy the machine is: load average, CPU taken by other processes, steal time, and its pace.

Read through psutil. No torch here: the session reads it before any cell runs.

The *pace* is how long a fixed pure-Python loop takes right now (``pace_probe``). On a
shared machine whole stretches of seconds run 1.5-2x slower for every process alike (the
other hardware thread of the core, or another guest on the host, is busy; the kernel
inside the guest sees no steal time and no load of its own), and a model's calls slow with
this loop (docs/measurement.md, "the machine's pace"). The timed loop runs the probe before
each chunk of calls, so a cell knows whether it ran at the machine's usual pace
(``PaceReference``: the 10th percentile of the probes this process and earlier sessions saw).

A ``Snapshot`` is cheap (the machine's CPU times and each process's, a few milliseconds for a
few hundred processes); two of them make a ``Load`` over the span
between: the share of the machine's CPU time that other processes took, the share the
hypervisor stole, and the busiest other processes by name.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Optional

import psutil

from .environment import cpu_count
from .stats import PACE_TOLERANCE

BUSY_OTHERS = 0.25  # other processes take more than a quarter of the CPUs: busy
BUSY_STEAL = 0.05  # the hypervisor takes more than 5% of the CPU time: busy


def loadavg() -> Optional[tuple[float, float, float]]:
    try:
        return psutil.getloadavg()
    except (AttributeError, OSError):
        return None


def _cpu_seconds() -> dict[str, float]:
    """Machine-wide CPU time (seconds, all CPUs): total and stolen by the hypervisor."""
    times = psutil.cpu_times()
    # guest time is already counted in user (Linux), so it is not added again.
    total = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"))
    return {"total": total, "steal": getattr(times, "steal", 0.0)}


def _process_seconds(own: set[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every other process: pid -> (name, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.pid in own:
            continue
        times = proc.info.get("cpu_times")
        if times is None:  # gone meanwhile, or not ours to read
            continue
        out[proc.pid] = (proc.info.get("name") or "?", times.user + times.system)
    return out


def _command(pid: int, name: str) -> str:
    """A short, readable command for a process: its command line's first words, else its name."""
    try:
        words = [w for w in psutil.Process(pid).cmdline() if w]
    except (psutil.Error, OSError):
        return name
    if not words:
        return name
    words[0] = os.path.basename(words[0])
    text = " ".join(" ".join(words).split())  # one line, however the arguments were spaced
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass
class Snapshot:
    when: float
    load: Optional[tuple[float, float, float]]
    cpu: Optional[dict[str, float]]
    processes: Optional[dict[int, tuple[str, float]]]

    @classmethod
    def take(cls, processes: bool = True) -> "Snapshot":
        own = {os.getpid()}
        return cls(time.monotonic(), loadavg(), _cpu_seconds(), _process_seconds(own) if processes else None)


@dataclasses.dataclass
class Load:
    """What the machine did over a span; figures are None where this platform does not tell."""

    cpus: int
    load_before: Optional[float]  # 1-minute load average at the start of the span
    load_during: Optional[float]  # 1-minute load average at its end (or the highest seen in between)
    others_cpu: Optional[float]  # share of all CPUs' time taken by other processes (0..1)
    steal: Optional[float]  # share of CPU time the hypervisor stole (0..1)
    busiest: list[tuple[str, float]] = dataclasses.field(default_factory=list)  # other processes: (command, share of one CPU)
    seconds: float = 0.0
    pace: Optional[float] = None  # the pace probe's median over its usual (1.0: usual; 1.6: 60% slower)
    pace_probe_us: Optional[float] = None  # the pace probe's median, microseconds

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "load_before": self.load_before, "load_during": self.load_during,
                "others_cpu": self.others_cpu, "steal": self.steal,
                "busiest": [{"command": c, "cpu": s} for c, s in self.busiest], "seconds": self.seconds,
                "pace": self.pace, "pace_probe_us": self.pace_probe_us}


def between(start: Snapshot, end: Snapshot, load_seen: Optional[float] = None, top: int = 3) -> Load:
    """The load over ``start``..``end``; ``load_seen``: the highest 1-minute load average sampled between."""
    cpus = cpu_count()
    seconds = max(end.when - start.when, 1e-9)
    during = end.load[0] if end.load else None
    if load_seen is not None and during is not None:
        during = max(during, load_seen)
    steal = others = None
    if start.cpu and end.cpu:
        total = end.cpu["total"] - start.cpu["total"]
        if total > 0:
            steal = max(0.0, (end.cpu["steal"] - start.cpu["steal"]) / total)
    busiest: list[tuple[str, float]] = []
    if start.processes is not None and end.processes is not None:
        capacity = seconds * cpus
        per: dict[int, float] = {}
        for pid, (name, spent_total) in end.processes.items():
            before = start.processes.get(pid)
            # A process that started within the span counts from its start: its whole CPU time is the
            # span's. (Same pid, new name: kernel workers rename themselves by task; still one process.)
            spent = spent_total - before[1] if before is not None else spent_total
            if spent > 0:
                per[pid] = min(spent, seconds * cpus)
        others = min(1.0, sum(per.values()) / capacity) if capacity > 0 else None
        for pid in sorted(per, key=per.get, reverse=True)[:top]:
            share = per[pid] / seconds
            if share >= 0.05:
                busiest.append((_command(pid, end.processes[pid][0]), share))
    return Load(cpus, start.load[0] if start.load else None, during, others, steal, busiest, seconds)


PACE_LOOP = 500  # iterations of the pace probe's loop: about 20 microseconds


def _pace_loop() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(PACE_LOOP):
        total += i * i
    return time.perf_counter() - started


def pace_probe() -> float:
    """Seconds for a fixed pure-Python loop: the machine's pace right now (longer when it is slowed).

    The loop runs three times and the faster of the last two counts: the first run pays for
    whatever ran before (docs/measurement.md)."""
    _pace_loop()
    return min(_pace_loop(), _pace_loop())


class PaceReference:
    """The machine's usual pace: the 10th percentile of the probes this process has seen,
    or of earlier sessions' (``remembered``, their median), whichever is faster."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.remembered: list[float] = []  # earlier sessions' 10th percentiles (between_sessions.py fills it)

    def add(self, samples: list[float]) -> None:
        self.samples.extend(s for s in samples if s > 0)

    def own(self) -> Optional[float]:
        if len(self.samples) < 10:
            return None
        return sorted(self.samples)[len(self.samples) // 10]

    def reference(self) -> Optional[float]:
        candidates = [v for v in (self.own(), statistics.median(self.remembered) if self.remembered else None) if v]
        return min(candidates) if candidates else None


PACE = PaceReference()  # per process: the session's probes accumulate here


def pace_of(samples: list[float], reference: Optional[float]) -> Optional[float]:
    """How much slower than usual the machine ran over ``samples`` (their median over the reference)."""
    if not samples or not reference:
        return None
    return statistics.median(samples) / reference


def sample(seconds: float = 0.25) -> Load:
    """The load over a short window from now (for the session's start), probing the pace meanwhile."""
    start = Snapshot.take()
    probes, end = [], time.monotonic() + seconds
    while time.monotonic() < end:  # back to back: a probe after a sleep reads slow (a woken vCPU)
        probes.append(pace_probe())
    PACE.add(probes)
    load = between(start, Snapshot.take())
    load.pace_probe_us = statistics.median(probes) * 1e6 if probes else None
    return load


def busy_reasons(load: dict[str, Any]) -> list[str]:
    """Why a load (``Load.as_dict()``) counts as busy; empty when it does not. What the CPUs did
    over the span, not the 1-minute load average, which still carries whatever ran a minute ago
    (a set-up's install, say)."""
    reasons = []
    if load.get("others_cpu") is not None and load["others_cpu"] > BUSY_OTHERS:
        reasons.append(f"other processes use {load['others_cpu']:.0%} of the CPUs")
    if load.get("steal") is not None and load["steal"] > BUSY_STEAL:
        reasons.append(f"steal time {load['steal']:.1%}")
    return reasons


def disturbance(load: dict[str, Any]) -> Optional[str]:
    """What disturbed one cell's measurement beyond the session's own state, or None: other
    processes took the CPUs during it, or the hypervisor stole time.

    The machine's pace is not judged per cell: a session that ran slow throughout is said once
    for the session, and the host's own slow stretches of a few seconds are the session's
    state, which every cell's pace term already states in its ``±ci`` (docs/measurement.md,
    "Disturbed cells")."""
    return "; ".join(busy_reasons(load)) or None


def describe(load: Optional[dict[str, Any]], threads: Optional[int] = None) -> str:
    """One line for a person: load before and during, others' CPU share and who, steal, threads."""
    if not load:
        return "machine load not recorded"

    def num(value: Optional[float], fmt: str) -> str:
        return "?" if value is None else format(value, fmt)

    parts = [f"load average {num(load.get('load_before'), '.2f')} before, {num(load.get('load_during'), '.2f')} during "
             f"({load.get('cpus')} CPUs)"]
    others = load.get("others_cpu")
    text = f"other processes {num(others, '.0%')} of the CPUs"
    if load.get("busiest"):
        text += " (" + ", ".join(f"{b['command']} {b['cpu']:.0%}" for b in load["busiest"]) + ")"
    parts.append(text)
    parts.append(f"steal {num(load.get('steal'), '.1%')}")
    if load.get("pace") is not None:
        pace = load["pace"]
        why = ""
        if pace > 1 + PACE_TOLERANCE:
            # Nothing busy inside the machine: what slowed it is outside (other guests on the host's cores).
            why = " (the machine ran slow)" if busy_reasons(load) else " (the machine ran slow with nothing in it busy: its host)"
        parts.append(f"a reference loop took {pace:.2f}x its usual time{why}")
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return ", ".join(parts)


class Monitor:
    """The load over a cell's timing: a snapshot at the start, the 1-minute load average sampled
    at each block boundary (``tick``, a cheap call), a snapshot at the end (``finish``)."""

    def __init__(self) -> None:
        self.start = Snapshot.take()
        self.highest: Optional[float] = None

    def tick(self) -> None:
        la = loadavg()
        if la is not None:
            self.highest = la[0] if self.highest is None else max(self.highest, la[0])

    def finish(self) -> Load:
        return between(self.start, Snapshot.take(), self.highest)


def disturbed_message(result: dict[str, Any]) -> str:
    """Why a cell's own measurement counts as disturbed, with what the machine did meanwhile
    (below the table and for --cnn-strict)."""
    from .results import cell_label

    lat = result.get("latency_ms") or {}
    text = f"{cell_label(result)} p50 {lat.get('p50', 0):.4g} ms ±{lat.get('ci95_rel', 0):.1%}: {lat.get('disturbed') or 'disturbed'}"
    again = lat.get("remeasured")
    if again:
        first = again.get("first") or {}
        text += f"; measured again {again.get('how')} after a first attempt ({first.get('why') or 'disturbed'})"
    return f"{text}; {describe(result.get('machine'), result.get('threads'))}"
