"""Measuring one cell, as a sequence of steps (``measure``): inputs, the eager reference, preparing with
threads, accuracy, latency (beside the reference), memory around them, the sub-plugins' hook, then the
row. Each step's record lands in ``Measurement``, which the fixture's read-only properties read."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any, Callable, Optional

import torch

from .. import results as R
from ..backends.base import PrepareContext, Prepared
from ..process_cache import device_name
from .accuracy import AccuracyFigures, measure_accuracy
from .context import CellContext, phase
from .inputs import Inputs, load_inputs
from .latency import Latency, measure_latency
from .memory import MemorySpan, record_held_after
from .prepare import calibrate, describe_prepared, measure_scaling, prepare_again, prepare_with_threads
from .reference import REFERENCE, ReferenceCompanion, prepare_reference, reference_logits

Calls = Optional[dict[str, Callable[[], Any]]]
OnMeasured = Callable[[Prepared, R.CellResult], None]


@dataclasses.dataclass
class Measurement:
    """What measuring the cell has produced so far: each step's record, pytest-benchmark's fixture
    (requested once the cell got as far as timing), and the row once it is complete."""

    inputs: Optional[Inputs] = None
    accuracy: Optional[AccuracyFigures] = None
    latency: Optional[Latency] = None
    benchmark: Any = None
    result: Optional[R.CellResult] = None


@dataclasses.dataclass
class _Held:
    """The prepared models the cell holds open, closed however the measurement ends."""

    cell: Optional[Prepared] = None
    reference: Optional[ReferenceCompanion] = None

    def close(self) -> None:
        for held in (self.cell, self.reference):
            if held is not None:
                held.close()
        self.cell = self.reference = None

    def replace_cell(self, prepare: Callable[[], Prepared]) -> Prepared:
        """Close the cell's prepared model, then hold the one ``prepare`` makes: each is closed once,
        whether or not what comes after succeeds."""
        if self.cell is not None:
            self.cell.close()
            self.cell = None
        self.cell = prepare()
        return self.cell


def new_result(cell: CellContext) -> R.CellResult:
    result = R.CellResult.for_cell({**cell.identity, "device": cell.device})
    result.device_name = device_name(cell.device)
    if cell.device == "cuda":
        result.gpu = cell.bench.gpu_index
    result.phases_s["model"] = cell.bench.take_build_seconds()
    return result


def measure(cell: CellContext, record: Measurement, calls: Calls, on_measured: OnMeasured) -> R.CellResult:
    """Measure the cell; ``calls`` are a suite's companions, timed in the same loop as the cell;
    ``on_measured(prepared, result)`` runs once measured, the prepared model still open, no lock held."""
    result = new_result(cell)
    record.inputs = inputs = load_inputs(cell, result)
    ctx = cell.bench.prepare_ctx(cell.spec, cell.device, cell.model)
    reference = reference_logits(cell, inputs, result.phases_s)  # before the memory span: not the cell's
    calibrate(cell, ctx, result)
    held = _Held()
    threads_before = torch.get_num_threads()
    try:
        with MemorySpan(cell) as memory:
            with phase(result.phases_s, "prepare"):
                held.cell = prepare_with_threads(cell, ctx, inputs.batch, result)
                measure_scaling(cell, held.cell, ctx, inputs.batch, result)
            memory.sample()
            describe_prepared(cell, held.cell, ctx, result)
            with phase(result.phases_s, "accuracy"), cell.lock.shared():
                record.accuracy = measure_accuracy(cell, held.cell, ctx, inputs, reference, result)
            memory.sample()
            # Requested only now, so a cell that skips or fails earlier never touches pytest-benchmark.
            record.benchmark = cell.request.getfixturevalue("benchmark")
            if not cell.timing_off:
                record.latency = _time(cell, held, ctx, inputs, calls, record.benchmark, result)
            if calls is not None:
                result.companions_ms = companions_ms(record.latency)
        memory.record(result)
        # Sub-plugins that measure more of the cell (coldstart/), outside any timing lock.
        on_measured(held.cell, result)
    finally:
        held.close()
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
        gc.collect()
    record_held_after(result)
    record.result = result
    return result


def _time(cell: CellContext, held: _Held, ctx: PrepareContext, inputs: Inputs, calls: Calls, benchmark: Any,
          result: R.CellResult) -> Latency:
    """Prepare the eager reference beside the cell, at its thread count, and time the two side by side."""
    with phase(result.phases_s, "prepare"):
        held.reference = prepare_reference(cell, ctx, inputs.batch, result.threads)

    def again_on(threads: int) -> Prepared:  # a re-measurement on 1 thread prepares the model again
        return held.replace_cell(lambda: prepare_again(cell, ctx, threads, result))

    return measure_latency(cell, held.cell, inputs, result, calls, held.reference, benchmark, again_on)


def companions_ms(latency: Optional[Latency]) -> dict[str, Any]:
    """A suite's companions in the row: each one's figures and its paired ratio to the cell."""
    if latency is None:
        return {}
    return {name: {**c.as_dict(), "paired_ratio": 1 / latency.paired[name][0] if name in latency.paired else None}
            for name, c in latency.companions.items() if name != REFERENCE}
