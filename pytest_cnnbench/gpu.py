"""GPU-side measurement: device memory per cell, compute latency from CUDA events, GPU facts.

Imported only when a cell runs on CUDA. Every memory figure carries its source, since
``torch.cuda.max_memory_allocated`` (exact peak, PyTorch's allocator only) and NVML
(what the driver sees for the process, sampled) measure different things.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

TORCH_PEAK = "torch.cuda.max_memory_allocated"
NVML_PROCESS = "nvml process memory (sampled max)"
NVML_DEVICE = "nvml device memory minus cell start (sampled max)"


def _nvml() -> Any:
    try:
        import pynvml  # from the nvidia-ml-py package

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no GPU: NVML figures are simply absent
        return None


class DeviceMemory:
    """Peak device memory over a cell. ``torch_allocator=True`` for backends whose memory all
    goes through PyTorch's caching allocator (eager, TorchScript); NVML samples otherwise."""

    def __init__(self, torch_allocator: bool, device_index: int = 0) -> None:
        self.torch_allocator = torch_allocator
        self.device_index = device_index
        self.samples: list[float] = []
        self.baseline_mb = 0.0
        self.nvml = None if torch_allocator else _nvml()
        self.source: Optional[str] = TORCH_PEAK if torch_allocator else None

    def __enter__(self) -> "DeviceMemory":
        import torch

        torch.cuda.synchronize()
        if self.torch_allocator:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.baseline_mb = self._device_used_mb() or 0.0
            self.sample()
        return self

    def _handle(self) -> Any:
        return self.nvml.nvmlDeviceGetHandleByIndex(self.device_index)

    def _process_mb(self) -> Optional[float]:
        try:
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self._handle()):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / 2**20
        except Exception:
            pass
        return None  # e.g. in a container whose PIDs NVML cannot see

    def _device_used_mb(self) -> Optional[float]:
        if self.nvml is None:
            return None
        try:
            return self.nvml.nvmlDeviceGetMemoryInfo(self._handle()).used / 2**20
        except Exception:
            return None

    def sample(self) -> None:
        """Record NVML's current figure (call at the cell's high points: after prepare, accuracy, timing)."""
        if self.torch_allocator or self.nvml is None:
            return
        value = self._process_mb()
        if value is not None:
            self.source = NVML_PROCESS
        else:
            used = self._device_used_mb()
            if used is None:
                return
            value, self.source = used - self.baseline_mb, NVML_DEVICE
        self.samples.append(value)

    def __exit__(self, *exc: Any) -> None:
        self.sample()

    @property
    def peak_mb(self) -> Optional[float]:
        if self.torch_allocator:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return max(self.samples) if self.samples else None


def time_device_calls(call: Callable[[], Any], rounds: int, events: bool,
                      make_event: Optional[Callable[[], Any]] = None) -> tuple[list[float], Optional[list[float]]]:
    """Time ``call`` (one device call that ends once the device is done) ``rounds`` times.

    Returns host wall times (s) and, with ``events``, CUDA-event device times (s). Events need a
    call that runs on PyTorch's current stream and can launch without waiting (a
    ``backends.base.DeviceCall``: PyTorch, torch-tensorrt): the end event is recorded right after
    the launch, and the host then waits on that event, so the event pair measures the device work
    and the wall time still includes its completion. Anything else (ONNX Runtime, which works on
    its own stream) gets wall times only.
    """
    import time

    launch = getattr(call, "launch", None) if events else None
    wall: list[float] = []
    if launch is None:
        for _ in range(rounds):
            started = time.perf_counter()
            call()
            wall.append(time.perf_counter() - started)
        return wall, None
    if make_event is None:
        import torch

        make_event = functools.partial(torch.cuda.Event, enable_timing=True)
    start_event, end_event = make_event(), make_event()
    device: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        start_event.record()
        launch()
        end_event.record()  # right after the launch: no host synchronize between the two events
        end_event.synchronize()  # wait for the work itself (the stream up to the end event)
        wall.append(time.perf_counter() - started)
        device.append(start_event.elapsed_time(end_event) / 1000.0)
    return wall, device


def gpu_environment() -> dict[str, Any]:
    """GPU facts for the report: only from modules already loaded (never imports torch itself)."""
    info: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["cuda"] = torch.version.cuda
        try:
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name()
                info["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            pass
    nvml = _nvml() if info.get("gpu") else None
    if nvml is not None:
        try:
            driver = nvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:
            pass
    return info
