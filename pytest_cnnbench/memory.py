"""Host memory of this process: the current resident size, and its peak over a span. No torch here."""

from __future__ import annotations

import os
from typing import Any, Optional

import psutil


class HostMemory:
    """Peak resident memory of this process over a span.

    On Linux the kernel's high-water mark (VmHWM, which psutil does not report) is reset at the
    start through /proc/self/clear_refs, so the peak belongs to the span and costs nothing to
    track. Elsewhere it falls back to getrusage's lifetime peak.
    """

    def __init__(self) -> None:
        self.start_mb = self.peak_mb = current_rss_mb()

    def __enter__(self) -> "HostMemory":
        self.start_mb = current_rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = max(peak_rss_mb(), self.start_mb)

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _high_water_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    value = _high_water_mb()
    if value is not None:
        return value
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if os.uname().sysname == "Darwin" else peak / 1024.0
