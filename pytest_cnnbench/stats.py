"""The statistics of a measurement: pure functions of numbers, no torch and no timing here.

What a stated spread is made of (see docs/measurement.md):

- ``latency_stats``: percentiles of per-call times, and the within-session 95% half-width of
  the p50 (block bootstrap over the timed blocks, never below the order-statistics one).
- ``session_spread``: how far a cell's p50 strays between sessions on this machine, from its
  earlier sessions pooled with a prior.
- ``pace_spread``: what a session owes to the machine running off its usual pace.
- ``paired_speedup``: a ratio measured side by side (chunks of the cell alternating with
  chunks of its reference), whose drift cancels chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any, Optional, Sequence

import numpy as np

from .verdicts import own_spread_reason

UNSTABLE_CI = 0.10  # a within-session spread above this (as pyperf's "may be unstable" at 10%) flags the cell
BOOTSTRAP_RESAMPLES = 1000
# Between sessions: the prior for the standard deviation of log(p50) from session to session, and
# its weight in sessions; the same prior serves the paired speedups. The measurements behind 1% are
# in docs/measurement.md ("Spread", "Paired speedup").
SESSION_PRIOR_SD = 0.01
SESSION_PRIOR_WEIGHT = 4
SESSION_HISTORY = 20  # earlier sessions kept per cell and configuration


@functools.lru_cache(maxsize=256)
def t975(dof: float) -> float:
    """Student's t, 97.5% quantile (two-sided 95%), for ``dof`` degrees of freedom."""
    if dof < 1:
        return math.inf
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


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
    ci95_rel: float  # 95% half-width of the p50 relative to it: within, between sessions and pace, in quadrature
    converged: bool = True  # the within-session half-width reached the target (False: the cap came first)
    blocks: int = 1  # timed blocks, separated in time
    span_s: Optional[float] = None  # wall time from the first timed block's start to the last one's end
    ci95_within: Optional[float] = None  # this session: block bootstrap (or order statistics), the wider
    ci95_sessions: Optional[float] = None  # between sessions (None: not applied)
    ci95_pace: Optional[float] = None  # how far the session's pace strayed from the machine's usual (0: within tolerance)
    sessions: Optional[int] = None  # earlier sessions the between-session term rests on (0: the prior alone)
    stable: Optional[bool] = None  # the cell's own measurement was undisturbed (None: not judged)
    disturbed: Optional[str] = None  # why not, when not: what happened during this cell
    remeasured: Optional[dict[str, Any]] = None  # why and what the first attempt gave, when measured twice

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_sessions(self, half_width: float, sessions: int, target_ci: float = math.inf,
                      pace_term: float = 0.0, disturbed: Optional[str] = None,
                      host_moved_it: Optional[bool] = None) -> "LatencyStats":
        """Add the between-session and pace terms to the stated spread, and judge the cell.

        The stated spread covers the session's pace (so two sessions' p50s stay within their
        spreads added), but the verdict does not: a whole session off pace is said once, for
        the session; a cell is flagged only for what happened to its own measurement."""
        within = self.ci95_within if self.ci95_within is not None else self.ci95_rel
        total = math.sqrt(within ** 2 + half_width ** 2 + pace_term ** 2)
        if own_spread(within, host_moved_it):
            spread = own_spread_reason(within, UNSTABLE_CI)
            disturbed = f"{spread}; {disturbed}" if disturbed else spread
        return dataclasses.replace(self, ci95_rel=total, ci95_sessions=half_width, sessions=sessions, ci95_pace=pace_term,
                                   converged=within <= target_ci, stable=disturbed is None, disturbed=disturbed)


def own_spread(within: float, host_moved_it: Optional[bool]) -> bool:
    """Whether a cell's wide within-session spread is its own: above ``UNSTABLE_CI``, unless what ran
    beside its calls shows that the host's slow stretches moved it (``host_moved_it``; None: nothing
    ran beside it to tell). That is the session's state, which the ``±ci`` states, not a flaw of the
    cell (docs/measurement.md, "Disturbed cells"). The words: ``verdicts.own_spread_reason``."""
    return within > UNSTABLE_CI and not host_moved_it


def median_ci(sorted_values: Sequence[float]) -> float:
    """Relative half-width of the median's distribution-free 95% CI (order statistics,
    normal approximation to the binomial); inf with too few values."""
    n = len(sorted_values)
    if n < 6:
        return math.inf
    median = statistics.median(sorted_values)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)))
    return max(median - sorted_values[lo], sorted_values[hi] - median) / median if median > 0 else math.inf


def _block_bootstrap_se(groups: list[np.ndarray], resamples: int, seed: int) -> float:
    """Standard error of the median of all values pooled, resampling whole groups (blocks) with
    replacement (scipy.stats.bootstrap), scaled by sqrt(B/(B-1)) as a bootstrap over few clusters
    runs narrow."""
    from scipy.stats import bootstrap

    count = len(groups)
    sizes = {len(g) for g in groups}
    if len(sizes) == 1:
        table = np.stack(groups)

        def pooled_median(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            picks = np.asarray(idx, dtype=np.intp)
            return np.median(table[picks].reshape(*picks.shape[:-1], -1), axis=-1)

        vectorized = True
    else:
        def pooled_median(idx: np.ndarray, axis: int = -1) -> float:  # type: ignore[misc]
            return float(np.median(np.concatenate([groups[int(i)] for i in idx])))

        vectorized = False
    result = bootstrap((np.arange(count, dtype=float),), pooled_median, n_resamples=resamples, vectorized=vectorized,
                       method="percentile", batch=max(1, 2_000_000 // max(1, sum(sizes) * count)),
                       rng=np.random.default_rng(seed))
    return float(result.standard_error) * math.sqrt(count / (count - 1))


def block_bootstrap_ci(in_order: Sequence[float], blocks: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Relative 95% half-width of the median of all values, from ``blocks`` equal consecutive blocks.

    Calls in one block share the machine's state (a neighbour's burst, the frequency), so the
    blocks, not the calls, are the independent units: the bootstrap resamples blocks, and its
    standard error times Student's t for B-1 degrees of freedom is the half-width. A single
    disturbed block moves the pooled median little. 0 with fewer than 3 blocks.
    """
    if blocks < 3 or len(in_order) < blocks:
        return 0.0
    size = len(in_order) // blocks
    values = np.asarray(in_order[: size * blocks], dtype=np.float64).reshape(blocks, size)
    centre = float(np.median(values))
    if centre <= 0:
        return math.inf
    return t975(blocks - 1) * _block_bootstrap_se(list(values), resamples, seed) / centre


def block_median_ci(in_order: Sequence[float]) -> float:
    """Relative 95% CI half-width from the medians of consecutive chunks (t on their mean), for
    calls with no block structure of their own (e.g. device-side timings)."""
    n = len(in_order)
    blocks = 10 if n >= 100 else 5 if n >= 25 else 0
    if not blocks:
        return 0.0
    size = n // blocks
    medians = [statistics.median(in_order[i * size:(i + 1) * size]) for i in range(blocks)]
    centre = statistics.median(in_order)
    return t975(blocks - 1) * statistics.stdev(medians) / math.sqrt(blocks) / centre if centre > 0 else math.inf


def latency_stats(seconds: Sequence[float], target_ci: float = math.inf, blocks: int = 0,
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
    p90, p99 = (float(q) for q in np.percentile(ms, [90, 99]))
    if blocks:
        ci_blocks = block_bootstrap_ci(in_order, blocks) if blocks >= 3 else 0.0
    else:
        ci_blocks = block_median_ci(in_order)
    ci = max(median_ci(ms), ci_blocks)
    return LatencyStats(
        mean=statistics.fmean(ms), p50=statistics.median(ms), p90=p90, p99=p99, min=ms[0], max=ms[-1],
        stdev=statistics.stdev(ms), rounds=n, ci95_rel=ci, converged=ci <= target_ci, blocks=max(blocks, 1),
        span_s=span_s, ci95_within=ci,
    )


def session_spread(earlier: Sequence[float], prior_sd: float = SESSION_PRIOR_SD,
                   prior_weight: float = SESSION_PRIOR_WEIGHT) -> float:
    """Relative 95% half-width for how far a session's figure (a p50, a paired speedup) strays
    from session to session.

    The variance of its log over the earlier sessions (the latest ``SESSION_HISTORY``) is
    pooled with a prior of ``prior_sd`` worth ``prior_weight`` sessions, and the half-width is
    Student's t for the pooled degrees of freedom times its square root: with no history it
    is t(4) x 1% = 2.8%; it follows the machine as sessions accumulate.
    """
    logs = [math.log(v) for v in list(earlier)[-SESSION_HISTORY:] if v and v > 0]
    squares, dof = 0.0, 0
    if len(logs) > 1:
        centre = statistics.fmean(logs)
        squares, dof = sum((x - centre) ** 2 for x in logs), len(logs) - 1
    variance = (prior_weight * prior_sd ** 2 + squares) / (prior_weight + dof)
    return t975(prior_weight + dof) * math.sqrt(variance)


def pace_spread(pace: Optional[float], tolerance: float = 0.10) -> float:
    """The spread a p50 owes to the machine running off its usual pace: the pace's deviation
    (pace 1.6 -> 0.6) once beyond ``tolerance`` (the probe's own noise), else 0.

    A cell timed while the whole machine ran 1.6x slower has a p50 about that much above what
    a session at the usual pace measures, however tight its blocks agree."""
    if not pace or pace <= 0:
        return 0.0
    deviation = max(pace, 1 / pace) - 1
    return deviation if deviation > tolerance else 0.0


def at_usual_pace(pace: Optional[float], tolerance: float = 0.10) -> bool:
    """Whether a session may join the between-session history: its pace is known and within
    ``tolerance`` of the usual. A pace that could not be judged (no reference yet) vouches for
    nothing: one slow session in the history widens every later session's spread."""
    return pace is not None and pace > 0 and not pace_spread(pace, tolerance)


def paired_ratio(values: Sequence[float], reference: Sequence[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio of paired values with its 95% interval (t on the log ratios)."""
    logs = [math.log(a / b) for a, b in zip(values, reference) if a > 0 and b > 0]
    n = len(logs)
    if n < 2:
        return (math.exp(logs[0]) if logs else 1.0, 0.0, math.inf)
    centre = statistics.fmean(logs)
    half = t975(n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


@dataclasses.dataclass
class Speedup:
    """The reference's time over the cell's (above 1: the cell is faster), measured side by side."""

    value: float
    ci95_rel: float  # within the session and between sessions, in quadrature
    paired: bool
    reference: str  # the reference cell's label
    ci95_within: Optional[float] = None
    ci95_sessions: Optional[float] = None
    chunks: int = 0  # chunk pairs the ratio rests on
    threads: Optional[int] = None  # CPU threads of both sides (the cell's count; None: not on the CPU)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def paired_speedup(cell: Sequence[float], reference: Sequence[float], chunks: Sequence[tuple[int, int, int]],
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Optional[tuple[float, float, int]]:
    """The reference's time over the cell's from calls that alternated chunk by chunk.

    ``cell[i]`` and ``reference[i]`` are the i-th calls of each; ``chunks`` lists
    ``(block, start, end)``: calls ``start:end`` of both ran back to back. Each chunk gives a
    log ratio of the two chunk medians, which drift slower than a chunk cancels out of; the
    estimate is their median, and its 95% half-width comes from resampling whole blocks (the
    independent units) as in ``block_bootstrap_ci``, or t on the chunks with fewer than 3
    blocks. Returns (speedup, relative half-width, chunks) or None without usable chunks."""
    by_block: dict[int, list[float]] = {}
    for block, start, end in chunks:
        a, b = cell[start:end], reference[start:end]
        if len(a) and len(b) and min(a) > 0 and min(b) > 0:
            by_block.setdefault(block, []).append(math.log(statistics.median(b) / statistics.median(a)))
    logs = [v for values in by_block.values() for v in values]
    if not logs:
        return None
    centre = statistics.median(logs)
    if len(by_block) >= 3:
        se = _block_bootstrap_se([np.asarray(v) for v in by_block.values()], resamples, seed)
        half = t975(len(by_block) - 1) * se
    elif len(logs) >= 2:
        half = t975(len(logs) - 1) * statistics.stdev(logs) * 1.2533 / math.sqrt(len(logs))  # SE of a median
    else:
        half = math.inf
    return math.exp(centre), math.expm1(half) if math.isfinite(half) else math.inf, len(logs)


def session_pace(paces: Sequence[Optional[float]]) -> Optional[float]:
    """The pace of a whole session: the median of its cells' paces (None when none was judged)."""
    known = [p for p in paces if p]
    return statistics.median(known) if known else None


# -- the accuracy cost of a row: a paired difference of proportions ---------------------------------
PAIRED_METHOD = "Newcombe hybrid score (method 10)"
WITHIN, EXCEEDS, INCONCLUSIVE = "within", "exceeds", "inconclusive"


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for one proportion (no continuity correction)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return (centre - half) / scale, (centre + half) / scale


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """p1 - p2 of two proportions measured on the same n items, with its interval (fractions).

    ``first_only`` items count for the first only (right in the row, wrong in the reference),
    ``second_only`` for the second only: the discordant pairs, which alone move the difference."""

    difference: float
    low: float
    high: float
    n: int
    first_only: int
    second_only: int
    level: float = 0.95
    method: str = PAIRED_METHOD


def paired_difference(both: int, first_only: int, second_only: int, neither: int, level: float = 0.95) -> PairedDifference:
    """The difference of two paired proportions, (first_only - second_only) / n, with the hybrid score
    interval of Newcombe (1998, Stat Med 17:2635-2650, method 10): Wilson score intervals for each
    margin, combined with the phi correlation of the 2x2 table (corrected towards zero by n/2 when
    positive, as the paper does). Unlike a conditional interval on the discordant pairs alone, it
    stays informative with few or none: with no discordant pair it is the margins' own uncertainty,
    not [0, 0]. Counts: a, b, c, d of the paired table (a: both succeed, d: neither)."""
    counts = (both, first_only, second_only, neither)
    if any(c < 0 for c in counts) or any(int(c) != c for c in counts):
        raise ValueError(f"paired counts must be non-negative integers, got {counts}")
    n = both + first_only + second_only + neither
    if n == 0:
        raise ValueError("paired counts are all zero: no items to compare")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be between 0 and 1, got {level}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    x1, x2 = both + first_only, both + second_only
    p1, p2 = x1 / n, x2 / n
    l1, u1 = wilson_interval(x1, n, z)
    l2, u2 = wilson_interval(x2, n, z)
    cross = both * neither - first_only * second_only
    margins = x1 * (n - x1) * x2 * (n - x2)
    phi = 0.0
    if margins > 0:
        phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(margins)
    difference = p1 - p2
    lower = difference - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    upper = difference + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return PairedDifference(difference, max(lower, -1.0), min(upper, 1.0), n, first_only, second_only, level)


def cost_verdict(low_pp: float, high_pp: float, budget_pp: float) -> str:
    """Judge an accuracy change's interval (row minus reference, in points; below zero: a loss)
    against the loss a budget allows (``budget_pp`` >= 0):

    - ``within``: even the interval's worst end loses at most the budget (``low_pp >= -budget_pp``);
    - ``exceeds``: even its best end loses more than the budget (``high_pp < -budget_pp``);
    - ``inconclusive``: it straddles the budget (the data cannot tell yet)."""
    if budget_pp < 0 or math.isnan(budget_pp):
        raise ValueError(f"an accuracy budget is a loss of zero or more points, got {budget_pp}")
    if low_pp > high_pp:
        raise ValueError(f"interval ends out of order: [{low_pp}, {high_pp}]")
    if low_pp >= -budget_pp:
        return WITHIN
    if high_pp < -budget_pp:
        return EXCEEDS
    return INCONCLUSIVE
