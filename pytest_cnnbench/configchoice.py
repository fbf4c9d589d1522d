"""Choosing between configurations of one cell (thread counts, TorchScript variants) by timing them
against each other in alternating blocks: the first candidate, the default, stays unless another
is clearly faster.

Used by ``threadchoice`` (threads) and the TorchScript backend (its variant); the choice and its
evidence (``ChoiceEvidence.as_dict()``) are what ``between_sessions`` remembers. Every call is timed by
``timing.timed``, the harness's one timer. No torch here.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Optional

from . import timing
from .stats import paired_ratio

PROBE_MARGIN = 0.05  # another configuration must be this much faster than the default, with 95% confidence
# Rounds a comparison gets before its time budget may end it undecided (each round: one block per candidate).
DECISIVE_ROUNDS = 20


@dataclasses.dataclass
class ChoiceEvidence:
    """The outcome of ``choose_configuration``: the choice and the evidence for it."""

    choice: Any
    medians_ms: dict[Any, float]  # median of each candidate's block medians
    ratios: dict[Any, tuple[float, float, float]]  # candidate -> (ratio to the default, 95% low, high)
    rounds: int
    verdict: str
    decided: bool = True  # False: a candidate was still neither clearly faster nor clearly not (the default kept)

    def as_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "medians_ms": {str(k): v for k, v in self.medians_ms.items()},
                "ratios": {str(k): list(v) for k, v in self.ratios.items()}, "rounds": self.rounds, "verdict": self.verdict,
                "decided": self.decided}


def choose_configuration(calls: dict[Any, Callable[[], Any]], before: Optional[dict[Any, Callable[[], Any]]] = None,
                         margin: float = PROBE_MARGIN, min_rounds: int = 6, max_rounds: int = 60, budget_s: float = 2.0,
                         block_s: float = 0.01, decisive_rounds: int = DECISIVE_ROUNDS) -> ChoiceEvidence:
    """Compare configurations in alternating blocks (A B B A A B ...), one block median per
    candidate and round, until each candidate is told apart from the first (the default, the
    configuration robust under contention) or the budget runs out.

    The budget is one of rounds as well as seconds: it ends an undecided comparison only after
    ``decisive_rounds`` rounds, however long their calls take (slow calls, one per block, would
    otherwise get 6-8 rounds in ``budget_s`` and stay undecided, keeping the default for them alone).

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
        per_call[key] = max(statistics.median(timing.timed_calls(calls[key], 3, 0.05)), 1e-9)
    if len(keys) == 1:
        return ChoiceEvidence(default, {default: per_call[default] * 1000}, {}, 0, "only candidate")
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
            # timing.timed looked up at each call, not imported: the harness has one timer.
            medians[key].append(statistics.median([timing.timed(call) for _ in range(size)]))
        rounds += 1
        if rounds < min_rounds:
            continue
        ratios = {key: paired_ratio(medians[key], medians[default]) for key in keys[1:]}
        if not _undecided(ratios, margin) or (rounds >= decisive_rounds and time.perf_counter() > deadline):
            break
    return _evidence(medians, ratios, default, margin, rounds)


def _undecided(ratios: dict[Any, tuple[float, float, float]], margin: float) -> list[Any]:
    """Candidates whose interval still straddles ``1 - margin``: neither clearly faster nor clearly not."""
    return [key for key, (_, lo, hi) in ratios.items() if lo < 1 - margin < hi]


def _evidence(medians: dict[Any, list[float]], ratios: dict[Any, tuple[float, float, float]], default: Any,
              margin: float, rounds: int) -> ChoiceEvidence:
    """The choice the rounds support: the fastest of the clearly faster candidates, else the default."""
    faster = [key for key, (_, _, hi) in ratios.items() if hi < 1 - margin]
    overall = {key: statistics.median(values) * 1000 for key, values in medians.items()}
    undecided = _undecided(ratios, margin)
    if faster:
        choice = min(faster, key=lambda k: overall[k])
        verdict = f"{choice} clearly faster ({ratios[choice][0]:.2f}x the time of {default}, 95% up to {ratios[choice][2]:.2f}x)"
    else:
        choice = default
        verdict = (f"undecided after {rounds} rounds: kept {default}" if undecided
                   else f"no candidate clearly faster than {default}")
    return ChoiceEvidence(choice, overall, ratios, rounds, verdict, not undecided)
