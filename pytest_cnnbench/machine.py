"""How busy the machine is: load average, CPU taken by other processes, steal time, and its pace.

Read from /proc (Linux); elsewhere only the load average is known and the other figures
are None. No torch here: the session reads it before any cell runs.

The *pace* is how long a fixed pure-Python loop takes right now (``pace_probe``). On a
shared machine whole stretches of seconds run 1.5-2x slower for every process alike (the
other hardware thread of the core, or another guest on the host, is busy; the kernel
inside the guest sees no steal time and no load of its own). Measured here, LeNet's calls
and this loop slowed together: interleaved every 2 ms, the logs of their 50-ms medians
correlated at 0.96 (eager) and 0.98 (ONNX Runtime). The timed loop runs the probe before
each chunk of calls, so a cell knows whether it ran at the machine's usual pace
(``PaceReference``: the 10th percentile of the probes this process and earlier sessions saw).

A ``Snapshot`` is cheap (one read of /proc/stat and of each process's stat line, a few
milliseconds for a few hundred processes); two of them make a ``Load`` over the span
between: the share of the machine's CPU time that other processes took, the share the
hypervisor stole, and the busiest other processes by name.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

try:
    _HZ = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _HZ = 100

UNSTABLE_CI = 0.10  # a stated spread above this (as pyperf's "may be unstable" at 10%) flags the cell
BUSY_OTHERS = 0.25  # other processes take more than a quarter of the CPUs: busy
BUSY_LOAD_PER_CPU = 1.0  # more runnable tasks than CPUs (1-minute average): busy
BUSY_STEAL = 0.05  # the hypervisor takes more than 5% of the CPU time: busy


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loadavg() -> Optional[tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def _cpu_jiffies() -> Optional[dict[str, int]]:
    """Machine-wide CPU time from /proc/stat's "cpu" line: total and steal (in clock ticks)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    total = sum(values[:8])
    steal = values[7] if len(values) > 7 else 0
    return {"total": total, "steal": steal}


def _process_ticks(own: set[int]) -> Optional[dict[int, tuple[str, int]]]:
    """CPU ticks (user + system, all threads) of every other process: pid -> (name, ticks)."""
    proc = Path("/proc")
    if not (proc / "stat").exists():
        return None
    out: dict[int, tuple[str, int]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in own:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read().decode("utf-8", "replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        close = raw.rfind(")")
        if close < 0:
            continue
        name = raw[raw.find("(") + 1:close]
        rest = raw[close + 2:].split()
        try:
            ticks = int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
        except (IndexError, ValueError):
            continue
        out[pid] = (name, ticks)
    return out


def _command(pid: int, name: str) -> str:
    """A short, readable command for a process: its command line's first words, else its name."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return name
    words = [w.decode("utf-8", "replace") for w in words if w]
    if not words:
        return name
    words[0] = os.path.basename(words[0])
    text = " ".join(" ".join(words).split())  # one line, however the arguments were spaced
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass
class Snapshot:
    when: float
    load: Optional[tuple[float, float, float]]
    cpu: Optional[dict[str, int]]
    processes: Optional[dict[int, tuple[str, int]]]

    @classmethod
    def take(cls, processes: bool = True) -> "Snapshot":
        own = {os.getpid()}
        return cls(time.monotonic(), loadavg(), _cpu_jiffies(), _process_ticks(own) if processes else None)


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

    @property
    def busy(self) -> bool:
        return bool(busy_reasons(self.as_dict()))


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
        capacity = seconds * _HZ * cpus
        per: dict[int, float] = {}
        for pid, (name, ticks) in end.processes.items():
            before = start.processes.get(pid)
            spent = ticks - before[1] if before is not None and before[0] == name else 0  # new processes: unknown share
            if spent > 0:
                per[pid] = spent
        others = min(1.0, sum(per.values()) / capacity) if capacity > 0 else None
        for pid in sorted(per, key=per.get, reverse=True)[:top]:
            share = per[pid] / (seconds * _HZ)
            if share >= 0.05:
                busiest.append((_command(pid, end.processes[pid][0]), share))
    return Load(cpus, start.load[0] if start.load else None, during, others, steal, busiest, seconds)


PACE_LOOP = 500  # iterations of the pace probe's loop: about 20 microseconds
PACE_TOLERANCE = 0.10  # a cell's median probe within this of the reference: the machine's usual pace


def _pace_loop() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(PACE_LOOP):
        total += i * i
    return time.perf_counter() - started


def pace_probe() -> float:
    """Seconds for a fixed pure-Python loop: the machine's pace right now (longer when it is slowed).

    The loop runs three times and the faster of the last two counts: the first run pays for
    whatever ran before (measured here: 22-28 us after a model call or a sleep, 19.6-20.6 us
    for the next runs whatever came before)."""
    _pace_loop()
    return min(_pace_loop(), _pace_loop())


class PaceReference:
    """The machine's usual pace: the 10th percentile of the probes this process has seen,
    or of earlier sessions' (``remembered``, their median), whichever is faster."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.remembered: list[float] = []  # earlier sessions' 10th percentiles (tuning.py fills it)

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


PACE_WAIT_S = 15.0  # longest wait for the machine's usual pace before a cell is measured again
PACE_WINDOW_S = 0.2  # the pace is judged over windows of back-to-back probes this long


def wait_for_usual_pace(limit_s: float = PACE_WAIT_S, window_s: float = PACE_WINDOW_S,
                        probe: Optional[Callable[[], float]] = None) -> tuple[float, Optional[float]]:
    """Probe the pace back to back until a window's median is within ``PACE_TOLERANCE`` of the
    machine's usual, or ``limit_s`` passes. Returns (seconds waited, the last window's pace; None
    when there is no reference yet).

    Why: on a shared host the machine runs 1.1-1.6x slow for stretches of seconds with nothing
    inside it busy (other guests on the same physical cores); a cell timed in one is measured
    again, and a re-measurement that starts in the same stretch only repeats it. The probes run
    back to back, not asleep, because the host treats a busy guest differently from an idle one.
    """
    probe = probe or pace_probe
    reference = PACE.reference()
    started = time.monotonic()
    if not reference:
        return 0.0, None
    while True:
        window, end = [], time.monotonic() + window_s
        while time.monotonic() < end:
            window.append(probe())
        pace = pace_of(window, reference)
        waited = time.monotonic() - started
        if pace is not None and pace <= 1 + PACE_TOLERANCE or waited >= limit_s:
            return waited, pace


def sample(seconds: float = 0.25) -> Load:
    """The load over a short window from now (for the session's start), probing the pace meanwhile."""
    start = Snapshot.take()
    probes, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        probes.append(pace_probe())
        time.sleep(0.004)
    PACE.add(probes)
    load = between(start, Snapshot.take())
    load.pace_probe_us = statistics.median(probes) * 1e6 if probes else None
    return load


def busy_reasons(load: dict[str, Any]) -> list[str]:
    """Why a load (``Load.as_dict()``) counts as busy; empty when it does not."""
    reasons = []
    cpus = load.get("cpus") or 1
    la = load.get("load_before")
    if la is not None and la > BUSY_LOAD_PER_CPU * cpus:
        reasons.append(f"load average {la:.2f} on {cpus} CPUs")
    if load.get("others_cpu") is not None and load["others_cpu"] > BUSY_OTHERS:
        reasons.append(f"other processes use {load['others_cpu']:.0%} of the CPUs")
    if load.get("steal") is not None and load["steal"] > BUSY_STEAL:
        reasons.append(f"steal time {load['steal']:.1%}")
    return reasons


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


def cell_label(result: dict[str, Any]) -> str:
    label = f"{result.get('model')}-{result.get('backend')}-bs{result.get('batch_size')}"
    if result.get("precision") not in (None, "fp32"):
        label += f"-{result['precision']}"
    return label


def unstable_message(result: dict[str, Any]) -> str:
    """Why a cell counts as unstable, with what the machine did meanwhile (summary and --cnn-strict)."""
    lat = result.get("latency_ms") or {}
    again = lat.get("remeasured")
    text = (f"unstable timing: {cell_label(result)} p50 {lat.get('p50', 0):.4g} ms, "
            f"±{lat.get('ci95_rel', 0):.1%} > {UNSTABLE_CI:.0%}")
    if lat.get("ci95_within") is not None and lat.get("ci95_sessions") is not None:
        text += f" (within the session {lat['ci95_within']:.1%}, between sessions {lat['ci95_sessions']:.1%})"
    if again:
        first = again.get("first") or {}
        text += f", measured again {again.get('how')} after a first ±{first.get('ci95_within', 0):.1%}"
        if first.get("threads") is not None:
            text += f" on {first['threads']} thread{'s' if first['threads'] != 1 else ''}"
        if first.get("pace") is not None and first["pace"] > 1 + PACE_TOLERANCE:
            text += f" at {first['pace']:.2f}x the usual pace"
        waited, found = again.get("waited_s"), again.get("pace_after_wait")
        if waited is not None and found is not None:
            text += (f" (it waited {waited:.1f} s for the usual pace first" +
                     (", and the machine stayed slow)" if found > 1 + PACE_TOLERANCE else ")"))
    return f"{text}; {describe(result.get('machine'), result.get('threads'))}"
