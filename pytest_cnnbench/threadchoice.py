"""How many CPU threads a cell runs on: the option, this session's choice, the remembered one, or a probe.

One thread first: it stays fast when other processes take a core (threads of one call waiting
on a descheduled sibling cost milliseconds); more threads replace it only when clearly faster,
compared interleaved (``timing.compare_interleaved``). A probed choice is remembered for this
machine and cell (tuning.py), so later sessions measure the same configuration.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from .timing import Comparison, compare_interleaved


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
    from . import tuning

    record = tuning.remembered_choice(cache, "threads", cell, reprobe)
    choice = record.get("choice") if record else None
    return choice if isinstance(choice, int) and choice >= 1 else None


def probe(calls: dict[int, Callable[[], Any]], set_threads: Callable[[int], None]) -> Comparison:
    """Compare the prepared candidates, one per thread count, interleaved."""
    before = {n: (lambda n=n: set_threads(n)) for n in calls}
    return compare_interleaved(calls, before)


def remember(cache: Any, cell: tuple, threads: int, comparison: Comparison) -> None:
    from . import tuning

    tuning.remember_choice(cache, "threads", cell, threads, comparison.as_dict())
