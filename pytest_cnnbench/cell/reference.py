"""Step 2, the reference: eager fp32's logits on the cell's images (the accuracy cost and agreement are
against them), and the eager cell prepared beside this one for its paired speedup. Which eager cell
that is, is ``reference_rule``'s (the table follows the same rule)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from .. import registry
from ..backends.base import PrepareContext, Prepared
from ..reference_rule import reference_label, reference_precision
from ..timing import Companion
from .context import CellContext, all_cores, phase
from .inputs import Inputs

REFERENCE = "reference"  # the companion name of the eager reference a cell's speedup is measured against


def reference_logits(cell: CellContext, inputs: Inputs, phases: dict[str, float]) -> torch.Tensor:
    """Eager fp32's logits on the evaluated images (from the process cache where it has them).
    Run before the cell's memory span: its pass is not the cell's, and on a GPU its allocations would
    inflate the cell's device peak."""
    with phase(phases, "accuracy"), cell.lock.shared(), all_cores():
        return cell.bench.reference(cell.model, cell.device, inputs.images, inputs.labels, inputs.content_id, cell.spec)


@dataclasses.dataclass
class ReferenceCompanion:
    """The eager cell timed beside this one: its ``label`` (recorded in the speedup), the prepared model
    and the ``companion`` call the timed loop alternates with the cell's."""

    label: str
    prepared: Prepared
    companion: Companion

    def close(self) -> None:
        self.prepared.close()


def prepare_reference(cell: CellContext, ctx: PrepareContext, batch: torch.Tensor,
                      threads: Optional[int]) -> Optional[ReferenceCompanion]:
    """Eager, prepared beside the cell, at the cell's own thread count (``threads``): the speedup is the
    backend's effect at equal resources (eager's own row may run with another count; the table says so).
    None for the reference itself, or where eager cannot run the reference's precision here."""
    precision = reference_precision(cell.spec.backend, cell.device, cell.spec.precision)
    if precision is None:
        return None
    eager: Any = registry.backends.create("eager")
    if eager.unavailable_reason(cell.device, precision):
        return None
    eager_ctx = dataclasses.replace(ctx, precision=precision, calibration=None, calibration_id="", calibration_note="")
    with torch.inference_mode(False):
        prepared = eager.prepare(cell.model.built.module, eager_ctx)
    label = reference_label({**cell.identity, "device": cell.device}, precision)
    return ReferenceCompanion(label, prepared, Companion(prepared.bind(batch), threads if cell.device == "cpu" else None))
