"""The reference rule: which eager row a row's speedup (and accuracy cost) is measured against.

One home for the rule the runner follows when it times a cell beside its reference and the table
follows when it shows or fills in a speedup. Pure: no torch, no pytest, so the table imports it.
"""

from __future__ import annotations

from typing import Any, Optional

from .results import cell_label

# Precisions eager PyTorch has no path for on a device: their speedup is over eager fp32.
EAGER_LACKS = {("cpu", "fp16"), ("cpu", "int8"), ("cuda", "int8")}
# Precisions whose speedup is over eager fp32 even where eager runs them: what a bf16 deployment replaces is fp32.
OVER_EAGER_FP32 = {"bf16"}


def reference_precision(backend: str, device: Optional[str], precision: Optional[str]) -> Optional[str]:
    """The precision of the eager row a row is measured against, or None for a row that is its own
    reference (eager fp32). Eager at another precision, a precision eager lacks on the device, and
    bf16 are measured against eager fp32; any other row against eager at its own precision."""
    precision = precision or "fp32"
    if backend == "eager" and precision == "fp32":
        return None
    if backend == "eager" or (device, precision) in EAGER_LACKS or precision in OVER_EAGER_FP32:
        return "fp32"
    return precision


def serves_as_reference(backend: str, precision: Optional[str]) -> bool:
    """Whether other rows may be measured against this one (the table shows it as ``ref``): eager at a
    precision that ``reference_precision`` maps some row to."""
    return backend == "eager" and (precision or "fp32") not in OVER_EAGER_FP32


def over_fallback(device: Optional[str], precision: Optional[str]) -> bool:
    """A row whose reference is eager fp32 because eager has no path for its precision on its device."""
    return (device, precision) in EAGER_LACKS


def reference_label(row: dict[str, Any], precision: str) -> str:
    """The label of the eager row at ``precision`` that ``row`` (its identity: model, batch, device...)
    is measured against; the paired speedup records it as ``reference``."""
    return cell_label({**row, "backend": "eager", "precision": precision})
