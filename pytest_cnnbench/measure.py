"""All measurement in one place: latency (through pytest-benchmark), host memory, accuracy, agreement.

Timing rules (see README, "How figures are measured"):

1. ``warmup`` untimed calls.
2. A pilot of at least ``PILOT_CALLS`` calls (or a tenth of the time cap) measures the
   spread; from it, the number of rounds that pins the median to within ``target_ci``
   (relative half-width of its 95% confidence interval, from order statistics) follows,
   since that half-width shrinks as 1/sqrt(rounds).
3. That many rounds, bounded by ``min_rounds``/``max_rounds`` and by what fits in the
   ``max_time`` cap, run through pytest-benchmark's pedantic mode: one call per round,
   each timed alone, so percentiles are per call. The achieved CI is reported; a cell
   capped by time before reaching the target says so (``converged`` is false).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from typing import Any, Callable, Optional

import torch

PILOT_CALLS = 30


@dataclasses.dataclass(frozen=True)
class TimingRules:
    warmup: int = 10
    min_rounds: int = 50
    max_rounds: int = 5000
    max_time: float = 5.0  # cap on the timed loop, seconds
    target_ci: float = 0.02  # stop once the median's 95% CI is within +-2%


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
    ci95_rel: float  # half-width of the median's 95% CI relative to the median (order statistics or block medians, the wider)
    converged: bool = True  # the CI reached the target (False: the time cap or max rounds came first)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


_T975 = {4: 2.776, 9: 2.262}  # Student's t, 97.5% quantile, by degrees of freedom


def block_median_ci(in_order: list[float]) -> float:
    """Relative 95% CI half-width from the medians of consecutive blocks of calls.

    Order statistics treat calls as independent; on a shared machine they drift (frequency,
    neighbours' load), which only shows between blocks. Returns 0 when too few calls.
    """
    n = len(in_order)
    blocks = 10 if n >= 100 else 5 if n >= 25 else 0
    if not blocks:
        return 0.0
    size = n // blocks
    medians = [statistics.median(in_order[i * size:(i + 1) * size]) for i in range(blocks)]
    centre = statistics.median(in_order)
    return _T975[blocks - 1] * statistics.stdev(medians) / math.sqrt(blocks) / centre if centre > 0 else math.inf


def latency_stats(seconds: list[float], target_ci: float = math.inf) -> LatencyStats:
    """Summarize per-call times (seconds, in the order measured) in milliseconds."""
    in_order = [s * 1000.0 for s in seconds]
    ms = sorted(in_order)
    n = len(ms)
    if n == 1:
        v = ms[0]
        return LatencyStats(v, v, v, v, v, v, 0.0, 1, math.inf, False)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    # The wider of the two: independent-call precision, and drift across the loop.
    ci = max(median_ci(ms), block_median_ci(in_order))
    return LatencyStats(
        mean=statistics.fmean(ms), p50=statistics.median(ms), p90=cuts[89], p99=cuts[98], min=ms[0], max=ms[-1],
        stdev=statistics.stdev(ms), rounds=n, ci95_rel=ci, converged=ci <= target_ci,
    )


def _timed_calls(call: Callable[[], Any], count: int, budget: float) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < count or (time.perf_counter() < deadline and len(times) < 10 * count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def plan_rounds(call: Callable[[], Any], rules: TimingRules) -> int:
    """Warm up, run the pilot, and return how many timed rounds reach the target CI within the cap."""
    for _ in range(rules.warmup):
        call()
    pilot = sorted(_timed_calls(call, PILOT_CALLS, 0.1 * rules.max_time))
    per_call = statistics.median(pilot)
    ci = median_ci(pilot)
    wanted = rules.max_rounds if not math.isfinite(ci) else math.ceil(len(pilot) * (ci / rules.target_ci) ** 2)
    fits = int(0.9 * rules.max_time / max(per_call, 1e-9))
    # Never fewer rounds than the pilot had: a quiet pilot must not shrink the real sample.
    return max(rules.min_rounds, min(max(wanted, len(pilot)), rules.max_rounds, fits))


PROBE_MARGIN = 0.10  # a variant must be this much faster than the default to replace it


def probe(call: Callable[[], Any], warmup_s: float = 0.1, measure_s: float = 0.25, min_calls: int = 5) -> float:
    """Median seconds per call after a warm-up of at least 3 calls / ``warmup_s`` (TorchScript's
    profiling executor and allocators settle during the first calls)."""
    _timed_calls(call, 3, warmup_s)
    return statistics.median(_timed_calls(call, min_calls, measure_s))


def fastest(timings: dict[Any, float]) -> Any:
    """The first (default) variant unless another is clearly faster: near-ties must not flip the
    configuration from run to run, or repeated runs would measure different things."""
    names = list(timings)
    best = min(names, key=timings.get)
    return best if timings[best] < (1 - PROBE_MARGIN) * timings[names[0]] else names[0]


def time_with_benchmark(benchmark: Any, call: Callable[[], Any], rules: TimingRules) -> Optional[LatencyStats]:
    """Time ``call`` through pytest-benchmark's fixture; None when benchmarks are disabled."""
    if getattr(benchmark, "disabled", False):
        call()
        return None
    rounds = plan_rounds(call, rules)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    return latency_stats(list(benchmark.stats.stats.data), rules.target_ci)


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
