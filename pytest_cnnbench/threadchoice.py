"""How many CPU threads a cell runs on: the option, this session's choice, the remembered one, or a probe.

One thread first: it stays fast when other processes take a core (threads of one call waiting
on a descheduled sibling cost milliseconds); more threads replace it only when clearly faster,
compared interleaved (``configchoice.choose_configuration``). A probed choice is remembered for this
machine and cell (between_sessions.py), so later sessions measure the same configuration.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from .configchoice import ChoiceEvidence, choose_configuration

# Remembered choices are keyed under this name. The first rule stored undecided probes as if they
# were decisions (slow calls kept 1 thread after 6-8 rounds): its records are not trusted.
KIND = "threads, decided"


@dataclasses.dataclass
class ThreadChoice:
    candidates: list[int]  # to prepare, the robust one (1) first
    source: str  # option, device, this session, remembered, probed


def candidates(device: str, option: Optional[int], chosen: dict[tuple, int], cell: tuple, cache: Any,
               reprobe: bool, current: int) -> ThreadChoice:
    if device != "cpu":
        return ThreadChoice([current], "device")
    if option is not None:
        return ThreadChoice([option], "option")
    if cell in chosen:
        return ThreadChoice([chosen[cell]], "this session")
    threads = remembered(cache, cell, reprobe)
    if threads is not None:
        return ThreadChoice([threads], "remembered")
    from .environment import physical_cores

    cores = physical_cores()
    return ThreadChoice([1, cores] if cores > 1 else [1], "probed")


def remembered(cache: Any, cell: tuple, reprobe: bool = False) -> Optional[int]:
    """The thread count an earlier session's probe chose for this cell on this machine, if any."""
    from . import between_sessions

    record = between_sessions.remembered_choice(cache, KIND, cell, reprobe)
    choice = record.get("choice") if record else None
    return choice if isinstance(choice, int) and choice >= 1 else None


def probe(calls: dict[int, Callable[[], Any]], set_threads: Callable[[int], None]) -> ChoiceEvidence:
    """Compare the prepared candidates, one per thread count, interleaved."""
    before = {n: (lambda n=n: set_threads(n)) for n in calls}
    return choose_configuration(calls, before)


def remember(cache: Any, cell: tuple, threads: int, comparison: ChoiceEvidence) -> bool:
    """Remember a probe's choice for later sessions, only when the probe decided (an undecided
    probe kept the default for want of evidence: a later session probes again). True if remembered."""
    from . import between_sessions

    if not comparison.decided:
        return False
    between_sessions.remember_choice(cache, KIND, cell, threads, comparison.as_dict())
    return True


# Environment variables that set or pin the threads of OpenMP runtimes (torch's, ONNX Runtime's, MKL's).
PINNING_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_")


def pinning(prepared: Any) -> dict[str, Any]:
    """What set or pinned a cell's threads when it was timed: torch's pools, the runtime's own settings
    (``thread_settings`` where a prepared model reports them: ONNX Runtime, OpenVINO), the process's CPU
    affinity and the OMP_*/KMP_* variables (the row's ``thread_pinning``)."""
    import torch

    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    runtime = getattr(prepared, "thread_settings", None)
    if runtime:
        out["runtime"] = dict(runtime)
    if hasattr(os, "sched_getaffinity"):
        out["affinity"] = sorted(os.sched_getaffinity(0))
    out["environment"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(PINNING_PREFIXES)}
    return out


def scaling(threads: int, comparison: ChoiceEvidence) -> dict[str, Any]:
    """Scaling efficiency from a side-by-side comparison of 1 and ``threads`` threads: time at 1 thread
    / time at n / n, with the 95% interval of the paired ratio (``configchoice.choose_configuration``)."""
    ratio, low, high = comparison.ratios[threads]  # time at n over time at 1
    return {"threads": threads, "speedup_over_1": 1 / ratio, "efficiency": 1 / ratio / threads,
            "efficiency_low": 1 / high / threads if high > 0 else None, "efficiency_high": 1 / low / threads if low > 0 else None,
            "rounds": comparison.rounds, "medians_ms": {str(k): v for k, v in comparison.medians_ms.items()}}
