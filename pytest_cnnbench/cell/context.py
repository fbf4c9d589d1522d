"""What every step of a cell reads (``CellContext``), and the small helpers the steps share."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Iterator, Optional

import pytest
import torch

from ..core import CellSpec
from ..pytestbenchmark import benchmark_disabled
from ..process_cache import CellModel, ProcessCache


@dataclasses.dataclass(frozen=True)
class CellContext:
    """One cell: its spec, model and backend, the process's shared ``ProcessCache``, the test's request and
    the machine lock (``worklock``: shared while preparing, exclusive while timing). Read-only."""

    spec: CellSpec
    bench: ProcessCache
    request: pytest.FixtureRequest
    identity: dict[str, Any]
    model: CellModel
    device: str
    backend: Any
    lock: Any

    @property
    def settings(self) -> Any:
        return self.bench.settings

    @property
    def timing_off(self) -> bool:
        return benchmark_disabled(self.request.config)

    def choice_parts(self, backend: Optional[str] = None, precision: Optional[str] = None) -> tuple:
        """The cell, as remembered choices and earlier sessions are keyed (with the machine, in between_sessions.py)."""
        spec = self.spec
        return (self.model.key, backend or spec.backend, spec.batch_size, precision or spec.precision,
                self.device, spec.dataset, tuple(self.model.info.input_shape))


@contextlib.contextmanager
def phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of a block to ``phases[name]`` (for --cnn-profile)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """Untimed passes (the eager reference, accuracy) run on every core: nothing measures their speed."""
    from ..environment import physical_cores

    before = torch.get_num_threads()
    wanted = max(physical_cores(), 1)
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
