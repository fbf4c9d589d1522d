"""Step 3, preparing the model on the backend: calibration (int8), the thread count (``threadchoice``:
on the CPU with --cnn-threads=auto, one preparation per candidate, compared interleaved), the scaling
efficiency under a thread sweep, and preparing again on another thread count."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import torch

from .. import progress, threadchoice
from .. import results as R
from ..backends.base import THREADS_TORCH, PrepareContext, Prepared, thread_use
from .context import CellContext, phase


def calibrate(cell: CellContext, ctx: PrepareContext, result: R.CellResult) -> None:
    """int8: the calibration images into ``ctx``, held apart from the evaluated ones where the data allows."""
    if cell.spec.precision != "int8":
        return
    with phase(result.phases_s, "dataset"), cell.lock.shared():
        calibration = cell.bench.calibration(cell.spec, cell.model.built, cell.model.info)
    ctx.calibration, ctx.calibration_id, ctx.calibration_note = calibration.images, calibration.id, calibration.note
    if not calibration.held_out:
        result.notes.append(f"calibration images are among the evaluated: {calibration.note}")


@dataclasses.dataclass
class ThreadOptions:
    """One preparation per thread candidate, with the seconds each took (the first built or loaded the artifact)."""

    prepared: dict[int, tuple[Prepared, float]]
    comparison: Any = None  # timing.Comparison where several candidates were probed

    def keep(self, threads: int) -> Prepared:
        """The chosen preparation; the others are closed."""
        for other, (unused, _) in self.prepared.items():
            if other != threads:
                unused.close()
        return self.prepared[threads][0]


def _prepare_candidates(cell: CellContext, ctx: PrepareContext, batch: torch.Tensor, candidates: list[int]) -> ThreadOptions:
    options = ThreadOptions({})
    try:
        with cell.lock.shared():
            for threads in candidates:
                torch.set_num_threads(threads)
                ctx.threads = threads
                started = time.perf_counter()
                options.prepared[threads] = (cell.backend.prepare(cell.model.built.module, ctx), time.perf_counter() - started)
        if len(candidates) > 1:
            calls = {n: options.prepared[n][0].bind(batch) for n in candidates}
            progress.update(f"choosing threads: {' or '.join(map(str, candidates))}")
            with torch.inference_mode(), cell.lock.exclusive():
                options.comparison = threadchoice.probe(calls, torch.set_num_threads)
    except BaseException:
        for unused, _ in options.prepared.values():
            unused.close()
        raise
    return options


def prepare_with_threads(cell: CellContext, ctx: PrepareContext, batch: torch.Tensor, result: R.CellResult) -> Prepared:
    """Prepare the model; on the CPU with --cnn-threads=auto, once per thread candidate (``threadchoice``),
    compared interleaved with the machine to itself; the choice is remembered."""
    bench, parts = cell.bench, cell.choice_parts()
    option = cell.spec.threads_requested or cell.settings.threads  # a sweep's count, else --cnn-threads (None: auto)
    choice = threadchoice.candidates(cell.device, option, bench.chosen_threads, parts, bench.cache,
                                     cell.settings.reprobe, torch.get_num_threads())
    candidates = choice.candidates
    options = _prepare_candidates(cell, ctx, batch, candidates)
    comparison = options.comparison
    threads = comparison.choice if comparison is not None else candidates[0]
    ctx.threads = threads
    if cell.device == "cpu" and option is None:
        bench.chosen_threads[parts] = threads  # this session; later ones only where the probe decided
        if comparison is not None:
            threadchoice.remember(bench.cache, parts, threads, comparison)
    # The first preparation is the one that built (or loaded) the artifact: report its cost.
    first, prepare_s = options.prepared[candidates[0]]
    prepared = options.keep(threads)
    torch.set_num_threads(threads)
    probes_ms = {str(n): ms for n, ms in comparison.medians_ms.items()} if comparison is not None else None
    result.set(threads=threads, thread_probe_ms=probes_ms, prepare_s=prepare_s,
               prepare_cached=bool(getattr(first, "cache_hit", False)),
               thread_choice={"source": choice.source, "verdict": comparison.verdict if comparison is not None else None,
                              "decided": comparison.decided if comparison is not None else None})
    return prepared


def measure_scaling(cell: CellContext, prepared: Prepared, ctx: PrepareContext, batch: torch.Tensor,
                    result: R.CellResult) -> None:
    """Under a thread sweep, a row at n > 1 threads: its scaling efficiency (time at 1 thread / time at
    n / n), 1 and n threads compared side by side as the thread probe compares them, not two rows' p50s.
    A backend on torch's pool switches the count between calls; others get a 1-thread instance."""
    n = cell.spec.threads_requested
    result.thread_pinning = threadchoice.pinning(prepared)
    if cell.device != "cpu" or not n or n <= 1 or result.threads != n or cell.timing_off:
        return
    one: Optional[Prepared] = None
    try:
        if thread_use(cell.backend) == THREADS_TORCH:
            call = prepared.bind(batch)
            calls = {1: call, n: call}
        else:
            torch.set_num_threads(1)
            with torch.inference_mode(False), cell.lock.shared():
                one = cell.backend.prepare(cell.model.built.module, dataclasses.replace(ctx, threads=1))
            calls = {1: one.bind(batch), n: prepared.bind(batch)}
        progress.update(f"scaling: 1 thread beside {n}")
        with torch.inference_mode(), cell.lock.exclusive():
            comparison = threadchoice.probe(calls, torch.set_num_threads)
        result.scaling = threadchoice.scaling(n, comparison)
    finally:
        if one is not None:
            one.close()
        torch.set_num_threads(n)


def describe_prepared(cell: CellContext, prepared: Prepared, ctx: PrepareContext, result: R.CellResult) -> None:
    """What the backend says it runs: provider, math, calibration, quantization, artifact size (all optional
    members of the protocol: a user's backend may have only run/bind/close)."""
    result.provider = getattr(prepared, "provider", cell.spec.backend)
    result.math = getattr(prepared, "math", None)
    if ctx.calibration_note:  # the backend's own account (images and method) where it gives one
        result.calibration = getattr(prepared, "calibration", None) or ctx.calibration_note
    result.quantization = getattr(prepared, "quantization", None)
    if getattr(prepared, "artifact_bytes", None) is not None:
        result.artifact_mb = prepared.artifact_bytes / 2**20


def prepare_again(cell: CellContext, ctx: PrepareContext, threads: int, result: R.CellResult) -> Prepared:
    """Prepare the model again on ``threads`` (a re-measurement on 1 thread); the caller closed the first."""
    torch.set_num_threads(threads)
    ctx.threads = threads
    with torch.inference_mode(False):
        prepared = cell.backend.prepare(cell.model.built.module, ctx)
    result.threads = threads
    result.provider = getattr(prepared, "provider", cell.spec.backend)
    return prepared
