"""All measurement in one place: latency (through pytest-benchmark), host memory, accuracy, agreement.

Timing rules: ``warmup`` untimed calls, then a short calibration that picks the
number of timed rounds so the loop lasts about ``max_time`` seconds (bounded by
``min_rounds`` and ``max_rounds``). Each round is one call, timed on its own by
pytest-benchmark's timer, so percentiles come from individual calls.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from typing import Any, Callable, Optional

import torch


@dataclasses.dataclass(frozen=True)
class TimingRules:
    warmup: int = 10
    min_rounds: int = 20
    max_rounds: int = 2000
    max_time: float = 2.0


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
    ci95_rel: float  # half-width of the median's 95% confidence interval, relative to the median

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def latency_stats(seconds: list[float]) -> LatencyStats:
    """Summarize per-call times (seconds) in milliseconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    n = len(ms)
    if n == 1:
        v = ms[0]
        return LatencyStats(v, v, v, v, v, v, 0.0, 1, math.inf)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    median = statistics.median(ms)
    # Distribution-free CI of the median from order statistics (normal approximation to the binomial).
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)))
    ci = max(median - ms[lo], ms[hi] - median) / median if median > 0 else math.inf
    return LatencyStats(
        mean=statistics.fmean(ms), p50=median, p90=cuts[89], p99=cuts[98], min=ms[0], max=ms[-1],
        stdev=statistics.stdev(ms), rounds=n, ci95_rel=ci,
    )


def choose_rounds(call: Callable[[], Any], rules: TimingRules) -> int:
    for _ in range(rules.warmup):
        call()
    # Calibrate on a few calls (at least 3, at most ~5% of the budget).
    started, calls = time.perf_counter(), 0
    while calls < 3 or (time.perf_counter() - started < 0.05 * rules.max_time and calls < 100):
        call()
        calls += 1
    per_call = (time.perf_counter() - started) / calls
    wanted = int(rules.max_time / max(per_call, 1e-9))
    return max(rules.min_rounds, min(rules.max_rounds, wanted))


def time_with_benchmark(benchmark: Any, call: Callable[[], Any], rules: TimingRules) -> Optional[LatencyStats]:
    """Time ``call`` through pytest-benchmark's fixture; None when benchmarks are disabled."""
    if getattr(benchmark, "disabled", False):
        call()
        return None
    rounds = choose_rounds(call, rules)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    return latency_stats(list(benchmark.stats.stats.data))


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
