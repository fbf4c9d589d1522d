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

# Every figure is over a baseline taken at the cell's start, after the caching allocator gave
# back its free blocks: the CUDA context, earlier cells' cached blocks and anything the process
# already held are not the cell's.
TORCH_PEAK = "torch.cuda.max_memory_allocated over cell start"
NVML_PROCESS = "nvml process memory over cell start (sampled max)"
NVML_DEVICE = "nvml device memory over cell start (sampled max)"


def _nvml() -> Any:
    try:
        import pynvml  # from the nvidia-ml-py package

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no GPU: NVML figures are simply absent
        return None


def nvml_uuid(torch_uuid: Any) -> str:
    """NVML's form of a device UUID ("GPU-xxxxxxxx-..."), from torch's ``get_device_properties().uuid``."""
    text = str(torch_uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def nvml_handle(nvml: Any, device_index: int) -> Any:
    """The NVML handle of CUDA device ``device_index`` as this process sees it.

    NVML ignores CUDA_VISIBLE_DEVICES and may order devices differently from CUDA, so its index
    ``device_index`` can be another GPU: the handle is taken by the device's UUID."""
    import torch

    return nvml_handle_by_uuid(nvml, torch.cuda.get_device_properties(device_index).uuid)


def nvml_handle_by_uuid(nvml: Any, torch_uuid: Any) -> Any:
    """NVML's handle of the device torch reports as ``torch_uuid`` (MIG instances too), whatever
    index NVML gives it."""
    return nvml.nvmlDeviceGetHandleByUUID(nvml_uuid(torch_uuid))


class DeviceMemory:
    """Peak device memory over a cell, over its start. ``torch_allocator=True`` for backends whose
    memory all goes through PyTorch's caching allocator (eager, TorchScript); NVML samples otherwise."""

    def __init__(self, torch_allocator: bool, device_index: Optional[int] = None) -> None:
        self.torch_allocator = torch_allocator
        self.device_index = device_index
        self.samples: list[float] = []
        self.baseline_mb = 0.0  # torch: allocated at start; NVML: the figure sampled at start
        self.nvml = None if torch_allocator else _nvml()
        self.source: Optional[str] = TORCH_PEAK if torch_allocator else None
        self._handle_cache: Any = None
        self._process_baseline: Optional[float] = None
        self._device_baseline: Optional[float] = None

    def __enter__(self) -> "DeviceMemory":
        import torch

        if self.device_index is None:
            self.device_index = torch.cuda.current_device()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # earlier cells' cached blocks are not this cell's
        if self.torch_allocator:
            torch.cuda.reset_peak_memory_stats()
            self.baseline_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self._process_baseline = self._process_mb()
            self._device_baseline = self._device_used_mb()
        return self

    def _handle(self) -> Any:
        if self._handle_cache is None:
            self._handle_cache = nvml_handle(self.nvml, self.device_index or 0)
        return self._handle_cache

    def _process_mb(self) -> Optional[float]:
        if self.nvml is None:
            return None
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
        """Record NVML's current figure over the start (call at the cell's high points: after
        prepare, accuracy, timing)."""
        if self.torch_allocator or self.nvml is None:
            return
        value = self._process_mb()
        if value is not None and self._process_baseline is not None:
            value, self.source = value - self._process_baseline, NVML_PROCESS
        else:
            used = self._device_used_mb()
            if used is None or self._device_baseline is None:
                return
            value, self.source = used - self._device_baseline, NVML_DEVICE
        self.samples.append(max(0.0, value))

    def __exit__(self, *exc: Any) -> None:
        self.sample()

    @property
    def peak_mb(self) -> Optional[float]:
        if self.torch_allocator:
            import torch

            return max(0.0, torch.cuda.max_memory_allocated() / 2**20 - self.baseline_mb)
        return max(self.samples) if self.samples else None


def worker_gpu(worker: Optional[str], device_count: int) -> int:
    """The GPU (index among the visible ones) an xdist worker times on: ``gwN`` takes N modulo the
    number of visible GPUs; the main process (no worker id) takes the first."""
    if device_count < 1:
        raise ValueError("no CUDA GPU is visible (CUDA_VISIBLE_DEVICES may hide them all)")
    if not worker or not worker.startswith("gw") or not worker[2:].isdigit():
        return 0
    return int(worker[2:]) % device_count


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
    from .timing import timed

    launch = getattr(call, "launch", None) if events else None
    if launch is None:
        return [timed(call) for _ in range(rounds)], None
    if make_event is None:
        import torch

        make_event = functools.partial(torch.cuda.Event, enable_timing=True)
    start_event, end_event = make_event(), make_event()
    def launch_and_wait() -> None:
        start_event.record()
        launch()
        end_event.record()  # right after the launch: no host synchronize between the two events
        end_event.synchronize()  # wait for the work itself (the stream up to the end event)

    wall: list[float] = []
    device: list[float] = []
    for _ in range(rounds):
        wall.append(timed(launch_and_wait))
        device.append(start_event.elapsed_time(end_event) / 1000.0)
    return wall, device


def gpu_environment() -> dict[str, Any]:
    """GPU facts for the report: only from modules already loaded (never imports torch itself)."""
    info: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():  # a CPU-only run names no CUDA build it never used
                info["cuda"] = torch.version.cuda
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
