"""What the results were measured on. Uses package metadata, so it never imports torch."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

# Settings that change CPU/GPU timings; recorded when set (torch itself is never imported here).
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
PACKAGES = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch-tensorrt", "pytest-benchmark", "pytest-cnnbench")


# TensorRT's "tensorrt" is a meta package; the runtime may be installed alone under one of these.
TENSORRT_RUNTIMES = ("tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-libs")


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "tensorrt":
            return next((v for v in map(package_version, TENSORRT_RUNTIMES) if v), None)
        return None


def os_name() -> str:
    """E.g. "Debian GNU/Linux 12 (bookworm)" on Linux, else platform's system and release."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}".strip()


@functools.lru_cache(maxsize=1)
def gpus() -> Optional[dict[str, Any]]:
    """NVIDIA GPUs and driver through NVML (nvidia-ml-py), when it is installed and sees a GPU; else None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: NVMLError of some kind
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if not count:
            return None
        names = []
        for index in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"names": names, "driver": driver.decode() if isinstance(driver, bytes) else str(driver)}
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores this process may use: one compute thread per core is the fastest setting
    (SMT siblings share the vector units and slow each other down)."""
    try:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        cores = set()
        for cpu in allowed:
            path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            cores.add(path.read_text().strip() if path.exists() else str(cpu))
        return max(1, len(cores))
    except OSError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(cwd: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(cwd: Path) -> Optional[str]:
    return _git(cwd, "rev-parse", "HEAD") or None


def git_dirty(cwd: Path) -> Optional[bool]:
    """Whether tracked files differ from the commit (None outside a checkout)."""
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def collect(results: list[dict[str, Any]], rootdir: Path, options: dict[str, Any]) -> dict[str, Any]:
    devices = sorted({r["device_name"] for r in results if r.get("device_name")})
    env = {
        "versions": {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}},
        "platform": platform.platform(),
        "os": os_name(),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": cpu_count(),
        "devices": devices,
        "git_commit": git_commit(rootdir),
        "git_dirty": git_dirty(rootdir),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "options": options,
        "env_vars": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }
    from .gpu import gpu_environment

    env.update(gpu_environment())  # CUDA, cuDNN, GPU name, driver: from modules already loaded, never importing torch
    gpu = gpus()
    if gpu:  # absent, not empty, where there is no NVIDIA GPU (or no nvidia-ml-py)
        env["gpus"], env["gpu_driver"] = gpu["names"], gpu["driver"]
    return env
