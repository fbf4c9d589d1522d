"""The result record of one cell, as it travels in ``user_properties`` and lands in JSON.

Plain dicts of JSON types only, so they survive pytest-xdist's serialization.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .cache import atomic_write_text

FORMAT_VERSION = 1
CELL_PROPERTY = "cnnbench_cell"  # identity, recorded before anything can fail
RESULT_PROPERTY = "cnnbench_result"  # figures, recorded once measured
# Called on each document before it is written; the plugin adds one that calls the
# pytest_cnnbench_update_json hook while a pytest session is configured.
document_updaters: list[Callable[[dict[str, Any]], None]] = []


def empty_result(cell: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": cell["model"],
        "backend": cell["backend"],
        "device": cell.get("device"),
        "precision": cell.get("precision", "fp32"),
        "batch_size": cell["batch_size"],
        "dataset": cell.get("dataset"),
        "samples": None,
        "top1": None,
        "top5": None,
        "accuracy_valid": None,
        "weights": None,
        "weights_note": None,  # where the weights came from, or why pretrained ones could not be had
        "weights_id": None,  # the published weights, e.g. ResNet50_Weights.IMAGENET1K_V2
        "latency_ms": None,
        "throughput_ips": None,
        "memory_mb": {"host_peak": None, "host_delta": None, "host_after": None, "device_peak": None, "device_peak_source": None},
        "prepare_s": None,
        "prepare_cached": None,
        "artifact_mb": None,
        "provider": None,
        "math": None,  # what the arithmetic was where it differs from the precision label, e.g. "fp32, TF32 off" (GPU)
        "device_name": None,
        "agreement": None,
        "reference_top1": None,  # the same model's eager fp32 on the same images
        "reference_top5": None,
        "delta_top1_pp": None,  # top-1 minus the reference's, in percentage points (the accuracy cost of the row)
        "delta_top5_pp": None,
        "calibration": None,  # int8: which images calibrated it and how, e.g. "64 MNIST training images, minmax"
        "quantization": None,  # int8: the scheme, e.g. "QDQ, u8 activations, s8 per-channel weights"
        "compute_latency_ms": None,  # GPU only: input already on the device, ends with a device sync
        "device_time_ms": None,  # GPU only: CUDA-event time of the same calls
        "threads": None,  # CPU threads the cell ran with
        "thread_probe_ms": None,  # --cnn-threads=auto: probed median per thread count
        "thread_choice": None,  # where the thread count came from (probed, remembered, option...) and the probe's verdict
        "machine": None,  # the load over the cell's timing: load average before/during, others' CPU share, steal
        "companions_ms": None,  # calls timed in the same loop as the cell (self-checks), by name
        "phases_s": {},  # wall time by phase: model, dataset, prepare, accuracy, timing
        "accuracy_asserted": None,  # False: accuracy means nothing here (the notes say why), nothing asserted
        "notes": [],  # findings a suite adds with cnnbench.note(), shown beside the status
        "reference_cached": None,  # eager logits read from the disk cache (an eager row's accuracy then too)
        "status": None,
        "reason": None,
        "test": cell.get("test"),
        "test_name": cell.get("test_name"),  # the test function and its own parameters, without the cell
    }


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def document(results: Iterable[dict[str, Any]], environment: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "environment": environment, "results": [_finite(r) for r in results]}


def write_json(path: Path, results: Iterable[dict[str, Any]], environment: dict[str, Any]) -> None:
    """Atomic rewrite: a reader (or a run killed mid-write) never sees half a file."""
    doc = document(results, environment)
    for update in document_updaters:
        update(doc)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def load_json(path: Path) -> dict[str, Any]:
    """Read a result file; ``ValueError`` with a message fit for users when it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    version: Optional[int] = data.get("format_version") if isinstance(data, dict) else None
    if version is None:
        raise ValueError(f"{path}: not a pytest-cnnbench result file (no format_version)")
    if version != FORMAT_VERSION:
        age = ("a newer" if version > FORMAT_VERSION else "an older") if isinstance(version, int) else "an unknown"
        raise ValueError(
            f"{path}: result format version {version!r} (written by {age} pytest-cnnbench) is not supported; "
            f"this pytest-cnnbench reads version {FORMAT_VERSION}"
            + ("; upgrade pytest-cnnbench to read it" if age == "a newer" else ""))
    if not isinstance(data.get("results"), list) or not all(
            isinstance(r, dict) and {"model", "backend", "batch_size"} <= r.keys() for r in data["results"]):
        raise ValueError(f"{path}: malformed result file (\"results\" must be a list of cell results)")
    return data
