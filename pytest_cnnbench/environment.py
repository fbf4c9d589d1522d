"""What the results were measured on. Uses package metadata, so it never imports torch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

PACKAGES = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch-tensorrt", "pytest-benchmark", "pytest-cnnbench")


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def collect(results: list[dict[str, Any]], rootdir: Path, options: dict[str, Any]) -> dict[str, Any]:
    devices = sorted({r["device_name"] for r in results if r.get("device_name")})
    return {
        "versions": {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}},
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "devices": devices,
        "git_commit": git_commit(rootdir),
        "argv": sys.argv[1:],
        "options": options,
    }
