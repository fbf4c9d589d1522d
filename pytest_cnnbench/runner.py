"""The ``cnnbench`` fixture: a thin facade over measuring one cell (``cell/pipeline.py``, step by step).

``run()`` measures the cell once and returns its row; ``note`` and the ``check_*`` methods add to the
row and assert (``cell/checks.py``). Sub-plugins get this object in ``pytest_cnnbench_cell_measured``
and read its properties. Imported only when a cell runs, so torch stays out of collection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest

from . import registry, worklock
from . import results as R
from .cell import checks
from .cell.context import CellContext
from .cell.inputs import Inputs
from .cell.pipeline import Measurement, measure
from .cell.publish import fail_if_disturbed, publish
from .core import CellSpec
from .stats import LatencyStats
from .process_cache import CellModel, ProcessCache


class CellRunner:
    """The ``cnnbench`` fixture: ``run()`` measures the cell; ``check_accuracy()`` asserts thresholds."""

    def __init__(self, spec: CellSpec, bench: ProcessCache, request: pytest.FixtureRequest, identity: dict[str, Any],
                 model: CellModel, device: str) -> None:
        lock = worklock.for_device(device, bench.claim_gpu() if device == "cuda" else 0)
        self._cell = CellContext(spec, bench, request, identity, model, device, registry.backends.create(spec.backend), lock)
        self._measured = Measurement()
        self._companion_names: Optional[list[str]] = None

    # -- what the cell is, and what measuring it produced (read-only) --------------------------------
    spec = property(lambda self: self._cell.spec)
    bench = property(lambda self: self._cell.bench)
    request = property(lambda self: self._cell.request)
    item = property(lambda self: self._cell.request.node)
    identity = property(lambda self: self._cell.identity)
    model = property(lambda self: self._cell.model)
    device = property(lambda self: self._cell.device)
    backend = property(lambda self: self._cell.backend)
    lock = property(lambda self: self._cell.lock, doc="worklock: .shared() while preparing, .exclusive() while timing")
    benchmark = property(lambda self: self._measured.benchmark, doc="pytest-benchmark's fixture, once timing began")
    result = property(lambda self: self._measured.result, doc="the cell's CellResult, once run() completed")

    @property
    def inputs(self) -> Optional[Inputs]:
        """The evaluated images and labels, the timed batch and the dataset (None before ``run``)."""
        return self._measured.inputs

    @property
    def companions(self) -> dict[str, LatencyStats]:
        """The figures of each call timed beside the cell (the eager reference as ``"reference"``)."""
        latency = self._measured.latency
        return dict(latency.companions) if latency is not None else {}

    @property
    def paired(self) -> dict[str, tuple[float, float, int]]:
        """Each companion's time over the cell's, chunk by chunk: (ratio, ±, chunks)."""
        latency = self._measured.latency
        return dict(latency.paired) if latency is not None else {}

    def _choice_parts(self, backend: Optional[str] = None, precision: Optional[str] = None) -> tuple:
        return self._cell.choice_parts(backend, precision)

    # -- measuring --------------------------------------------------------------------------------
    def run(self, companions: Optional[dict[str, Callable[[], Any]]] = None) -> R.CellResult:
        """Prepare, evaluate accuracy, time, measure memory; record and return the result.

        ``companions``: other calls to time in the same loop as the cell, alternating with it in short
        chunks (see ``timing.BlockSchedule``); their figures land in ``self.companions``, each one's time
        over the cell's, chunk by chunk, in ``self.paired``, and both in the result's ``companions_ms``.
        A cell is measured once: later calls return the same result; asking then for companions other
        than the first call's is an error (give them to the first ``run``).
        """
        names = sorted(companions) if companions is not None else None
        if self.result is not None:
            if names is not None and names != self._companion_names:
                raise ValueError(f"{self.spec.id}: cnnbench.run() already measured this cell with companions "
                                 f"{self._companion_names or 'none'}; a cell is measured once, so give "
                                 f"companions {names} to its first run()")
            return self.result
        self._companion_names = names
        result = measure(self._cell, self._measured, companions, self._measured_hook)
        self._publish()
        fail_if_disturbed(result, self.bench.settings.strict)
        return result

    def _measured_hook(self, prepared: Any, result: R.CellResult) -> None:
        self.request.config.hook.pytest_cnnbench_cell_measured(cell=self, prepared=prepared, result=result)

    def _publish(self) -> None:
        assert self.result is not None
        publish(self.item, self.result, self.benchmark)

    # -- what suites call ------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """Add a finding to this cell's row (shown beside its status, kept in the result files)."""
        self.run().notes.append(text)
        self._publish()

    def check_accuracy(self, min_top1: Optional[float] = None, min_top5: Optional[float] = None,
                       min_relative_to_eager: Optional[float] = None, rule: str = "") -> None:
        """Assert accuracy thresholds (fractions); where accuracy means nothing, the row says so and nothing
        is asserted (a failure with --cnn-require-accuracy). See ``cell.checks.check_accuracy``."""
        checks.check_accuracy(self.run(), self.spec, self.bench.settings, self._publish,
                              min_top1, min_top5, min_relative_to_eager, rule)

    def check_agreement(self, max_rel_err: float, min_top1_agree: float) -> None:
        """Assert the backend's logits match eager's: the check that holds even with random weights."""
        checks.check_agreement(self.run(), self.spec, max_rel_err, min_top1_agree)

    def check_precision_cost(self, max_top1_drop_pp: float, max_top5_drop_pp: Optional[float] = None) -> None:
        """Judge this row's accuracy cost against eager fp32, paired image by image, against the loss allowed:
        *exceeds* fails, *inconclusive* fails with --cnn-strict. See ``cell.checks.check_precision_cost``."""
        checks.check_precision_cost(self.run(), self.spec, self.bench.settings, self._publish,
                                    max_top1_drop_pp, max_top5_drop_pp)
