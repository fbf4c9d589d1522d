"""Step 6, memory: the host's and the device's peak over the cell's preparation, accuracy pass and
timing (a span the pipeline opens around them), and what the process holds once the cell is released."""

from __future__ import annotations

from typing import Any

from .. import results as R
from ..memory import HostMemory, current_rss_mb
from .context import CellContext


class _NoDeviceMemory:
    peak_mb = source = None

    def __enter__(self) -> "_NoDeviceMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def sample(self) -> None:
        pass


class MemorySpan:
    """Host (RSS) and device peaks over a block; ``sample()`` the device between steps; ``record`` into the row."""

    def __init__(self, cell: CellContext) -> None:
        self.host = HostMemory()
        self.device: Any = _NoDeviceMemory()
        if cell.device == "cuda":
            from ..gpu import DeviceMemory

            self.device = DeviceMemory(torch_allocator=bool(getattr(cell.backend, "uses_torch_allocator", False)))

    def __enter__(self) -> "MemorySpan":
        self.host.__enter__()
        try:
            self.device.__enter__()
        except BaseException:
            self.host.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.device.__exit__(*exc)
        finally:
            self.host.__exit__(*exc)

    def sample(self) -> None:
        self.device.sample()

    def record(self, result: R.CellResult) -> None:
        result.memory_mb.update(host_peak=self.host.peak_mb, host_delta=self.host.delta_mb,
                                device_peak=self.device.peak_mb, device_peak_source=self.device.source)


def record_held_after(result: R.CellResult) -> None:
    """What the process holds once the cell is released: it must not grow from cell to cell."""
    result.memory_mb["host_after"] = current_rss_mb()
