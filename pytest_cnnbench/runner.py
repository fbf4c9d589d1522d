"""One cell, measured: what the ``cnnbench`` fixture hands a test.

``CellRunner.run()`` prepares the model on the backend, runs the accuracy pass, times the
cell beside its reference (eager, for the paired speedup) and measures memory, then records
the result for the table. The shared, per-process state (models, datasets, references) is the
``Workbench``'s; how threads are chosen is ``threadchoice``'s; the timed loop is ``timing``'s;
when a cell is measured again is ``remeasure_reason`` below. Imported only when a cell runs,
so torch stays out of collection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import time
import types
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

from . import progress, registry, threadchoice, worklock
from . import results as R
from .accuracy import Agreement, accuracy_from_logits, agreement, evaluate, paired_counts
from .backends.base import THREADS_AT_PREPARE, THREADS_TORCH, PrepareContext, Prepared, device_events, thread_use
from .core import CellSkip, CellSpec
from .memory import HostMemory, current_rss_mb
from .models.fixture_model import FixtureModelError, check_fixture_model  # noqa: F401  (re-exported for plugin.py)
from .stats import (SESSION_HISTORY, UNSTABLE_CI, LatencyStats, Speedup, at_usual_pace, own_spread, pace_spread,
                    session_spread)
from .pytestbenchmark import benchmark_disabled, hand_to_benchmark
from .timing import Companion, Timing, TimingRules, time_cell
from .verdicts import own_spread_reason
from .workbench import ACCURACY_BATCH, CellModel, Workbench, accuracy_batch, device_name

REFERENCE = "reference"  # the companion name of the eager reference a cell's speedup is measured against
# Precisions eager PyTorch has no path for on a device: their speedup is over eager fp32.
EAGER_LACKS = {("cpu", "fp16"), ("cpu", "int8"), ("cuda", "int8")}
# Precisions whose speedup is over eager fp32 even where eager runs them: what a bf16 deployment replaces is fp32.
OVER_EAGER_FP32 = {"bf16"}


def remeasure_reason(stats: LatencyStats, disturbed: Optional[str], host_moved_it: Optional[bool] = None) -> Optional[str]:
    """Why a cell is measured a second time, or None: its own calls spread too wide, or something
    disturbed it (another process, a slow stretch beyond the session's). A whole session off its
    usual pace is not a reason: measuring again inside it would only repeat it."""
    if disturbed:
        return disturbed
    within = stats.ci95_within if stats.ci95_within is not None else stats.ci95_rel
    if own_spread(within, host_moved_it):
        return own_spread_reason(within, UNSTABLE_CI)
    return None


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """Untimed passes (the eager reference, accuracy) run on every core: nothing measures their speed."""
    from .environment import physical_cores

    before = torch.get_num_threads()
    wanted = max(physical_cores(), 1)
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of a block to ``phases[name]`` (for --cnn-profile)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


def _points(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``value - reference`` in percentage points (fractions in, points out); None when either is missing."""
    if value is None or reference is None:
        return None
    return round((value - reference) * 100.0, 4)


class _NoDeviceMemory:
    peak_mb = source = None

    def __enter__(self) -> "_NoDeviceMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def sample(self) -> None:
        pass


class CellRunner:
    """The ``cnnbench`` fixture: ``run()`` measures the cell; ``check_accuracy()`` asserts thresholds."""

    def __init__(self, spec: CellSpec, bench: Workbench, request: pytest.FixtureRequest, identity: dict[str, Any],
                 model: CellModel, device: str) -> None:
        self.spec = spec
        self.bench = bench
        self.request = request
        self.item = request.node
        self.identity = identity
        self.model = model
        self.device = device
        self.benchmark: Any = None
        self.result: Optional[R.CellResult] = None
        self.reference_top1: Optional[float] = None
        self.backend = registry.backends.create(spec.backend)
        self.companions: dict[str, LatencyStats] = {}
        self.paired: dict[str, tuple[float, float, int]] = {}  # companion -> (its time / the cell's; ±; chunks)
        self.reference_label: Optional[str] = None  # the eager cell the speedup is measured against
        self.lock = worklock.for_device(device, bench.claim_gpu() if device == "cuda" else 0)

    def run(self, companions: Optional[dict[str, Callable[[], Any]]] = None) -> R.CellResult:
        """Prepare, evaluate accuracy, time, measure memory; record and return the result dict.

        ``companions``: other calls to time in the same loop as the cell, alternating with it
        in short chunks (see ``timing.BlockSchedule``); their figures land in
        ``self.companions``, each one's time over the cell's, chunk by chunk, in
        ``self.paired``, and both in the result's ``companions_ms``. The self-checks use them;
        the eager reference of the speedup is one more, added here.
        """
        if self.result is not None:
            return self.result
        spec, bench, model = self.spec, self.bench, self.model
        built = model.built
        result = R.CellResult.for_cell({**self.identity, "device": self.device})
        result.device_name = device_name(self.device)
        if self.device == "cuda":
            result.gpu = bench.gpu_index
        phases: dict[str, float] = result.phases_s
        phases["model"] = bench.take_build_seconds()
        try:
            with _phase(phases, "dataset"), self.lock.shared():
                dataset, images, labels = bench.dataset(spec, built, model.info)
        except CellSkip as exc:
            pytest.skip(str(exc))
        result.set(weights=built.weights_kind, weights_note=built.weights_note, weights_id=built.weights_id or None,
                   dataset_images=getattr(dataset, "total_images", None), evaluation=getattr(dataset, "evaluation_note", None))
        result.accuracy_valid = built.accuracy_meaningful and bool(dataset.labels_meaningful)

        batch = images[: spec.batch_size]
        if len(batch) < spec.batch_size:  # small datasets: tile samples up to the batch size
            batch = images[torch.arange(spec.batch_size) % len(images)]
        ctx = bench.prepare_ctx(spec, self.device, model)
        # The eager reference first, outside the memory span: its pass (when not cached) is not
        # the cell's, and on a GPU its allocations would inflate the cell's device peak.
        with _phase(phases, "accuracy"), self.lock.shared(), all_cores():
            reference = bench.reference(model, self.device, images, labels, dataset.content_id, spec)
        if spec.precision == "int8":  # calibration images, held apart from the evaluated ones where the data allows
            with _phase(phases, "dataset"), self.lock.shared():
                calibration = bench.calibration(spec, built, model.info)
            ctx.calibration, ctx.calibration_id, ctx.calibration_note = calibration.images, calibration.id, calibration.note
            if not calibration.held_out:
                result.notes.append(f"calibration images are among the evaluated: {calibration.note}")
        threads_before = torch.get_num_threads()
        prepared: Optional[Prepared] = None
        reference_prepared: Optional[Prepared] = None
        memory = HostMemory()
        device_memory = self._device_memory()
        stats = None
        try:
            with memory, device_memory:
                with _phase(phases, "prepare"):
                    prepared = self._prepare(built.module, ctx, batch, result)
                    self._scaling(prepared, built.module, ctx, batch, result)
                device_memory.sample()
                result.provider = getattr(prepared, "provider", self.spec.backend)
                result.math = getattr(prepared, "math", None)
                if ctx.calibration_note:  # the backend's own account (images and method) where it gives one
                    result.calibration = getattr(prepared, "calibration", None) or ctx.calibration_note
                result.quantization = getattr(prepared, "quantization", None)
                if getattr(prepared, "artifact_bytes", None) is not None:
                    result.artifact_mb = prepared.artifact_bytes / 2**20

                with _phase(phases, "accuracy"), self.lock.shared():
                    self._accuracy(result, prepared, built.module, ctx, images, labels, dataset.content_id, reference)
                device_memory.sample()

                # Requested only now, so a cell that skips or fails earlier never touches pytest-benchmark.
                self.benchmark = self.request.getfixturevalue("benchmark")
                if not benchmark_disabled(self.request.config):
                    s = bench.settings
                    rules = TimingRules(s.warmup, s.min_rounds, s.max_rounds, s.max_time, s.target_ci, s.min_time)
                    all_companions = {name: Companion(call) for name, call in (companions or {}).items()}
                    with _phase(phases, "prepare"):
                        reference_prepared, reference_companion = self._reference_companion(built.module, ctx, result)
                    if reference_companion is not None:
                        all_companions[REFERENCE] = reference_companion
                    with _phase(phases, "timing"), torch.inference_mode(), self.lock.exclusive():
                        stats, prepared = self._time(prepared, batch, rules, built.module, ctx, result, all_companions)
                        result.thread_pinning = threadchoice.pinning(prepared)  # as timed last (a re-measurement may move it)
                        # Optional members of the protocol: a user's backend may have only run/bind/close.
                        bind_device = getattr(prepared, "bind_device", None)
                        device_call = bind_device(batch) if bind_device is not None else None
                        if device_call is not None:
                            self._time_on_device(result, device_call, rules)
                    if companions is not None:
                        result.companions_ms = {
                            name: {**c.as_dict(), "paired_ratio": 1 / self.paired[name][0] if name in self.paired else None}
                            for name, c in self.companions.items() if name != REFERENCE}
            if stats is not None:
                result.latency_ms = stats
                result.throughput_ips = spec.batch_size * 1000.0 / stats.p50
            result.memory_mb.update(host_peak=memory.peak_mb, host_delta=memory.delta_mb,
                                       device_peak=device_memory.peak_mb, device_peak_source=device_memory.source)
            self.inputs = types.SimpleNamespace(images=images, labels=labels, batch=batch, dataset=dataset)
            # Sub-plugins that measure more of the cell (LoadGen's scenarios, cold start), outside any timing lock.
            self.request.config.hook.pytest_cnnbench_cell_measured(cell=self, prepared=prepared, result=result)
        finally:
            for held in (prepared, reference_prepared):
                if held is not None:
                    held.close()
            del prepared, reference_prepared
            if torch.get_num_threads() != threads_before:
                torch.set_num_threads(threads_before)
            gc.collect()
        # What the process holds once the cell is released: it must not grow from cell to cell.
        result.memory_mb["host_after"] = current_rss_mb()
        self.result = result
        self._publish()
        if stats is not None and stats.stable is False and bench.settings.strict:
            from .machine import disturbed_message

            pytest.fail(f"disturbed timing: {disturbed_message(result.as_dict())} (--cnn-strict)", pytrace=False)
        return result

    def _publish(self) -> None:
        """The result's JSON form into the test's ``user_properties`` (replacing an earlier one: notes
        and checks come after ``run``), and into pytest-benchmark's extra_info where it times."""
        assert self.result is not None
        row = self.result.as_dict()
        props = self.item.user_properties
        props[:] = [p for p in props if p[0] != R.RESULT_PROPERTY]
        props.append((R.RESULT_PROPERTY, row))
        if row["latency_ms"] is not None and self.benchmark is not None and not getattr(self.benchmark, "disabled", True):
            self.benchmark.extra_info["cnnbench"] = {k: v for k, v in row.items() if k != "test"}

    # -- the reference of the speedup -------------------------------------------------------
    def _reference_spec(self) -> Optional[tuple[str, str]]:
        """(label, precision) of the eager cell this one's speedup is measured against, or None
        for the eager reference itself."""
        spec = self.spec
        if spec.backend == "eager" and spec.precision == "fp32":
            return None
        precision = spec.precision
        if spec.backend == "eager" or (self.device, precision) in EAGER_LACKS or precision in OVER_EAGER_FP32:
            precision = "fp32"
        if spec.backend == "eager" and precision == spec.precision:
            return None
        label = R.cell_label({**self.identity, "backend": "eager", "precision": precision, "device": self.device})
        return label, precision

    def _reference_companion(self, module: torch.nn.Module, ctx: PrepareContext,
                             result: R.CellResult) -> tuple[Optional[Prepared], Optional[Companion]]:
        """Eager, prepared beside the cell, at the cell's own thread count: the speedup is the backend's
        effect at equal resources (eager's own row may run with another count; the table says so)."""
        found = self._reference_spec()
        if found is None:
            return None, None
        label, precision = found
        eager = registry.backends.create("eager")
        if eager.unavailable_reason(self.device, precision):
            return None, None
        eager_ctx = dataclasses.replace(ctx, precision=precision, calibration=None, calibration_id="", calibration_note="")
        threads = result.threads if self.device == "cpu" else None
        batch = self._batch
        with torch.inference_mode(False):
            prepared = eager.prepare(module, eager_ctx)
        self.reference_label = label
        return prepared, Companion(prepared.bind(batch), threads)

    # -- timing ---------------------------------------------------------------------------------
    def _time(self, prepared: Prepared, batch: torch.Tensor, rules: TimingRules, module: torch.nn.Module,
              ctx: PrepareContext, result: R.CellResult,
              companions: dict[str, Companion]) -> tuple[LatencyStats, Prepared]:
        """Time the cell beside its companions; measure it again once if its own measurement was
        disturbed; add the between-session and pace terms; hand the calls to pytest-benchmark.

        Returns the statistics and the prepared model timed last (a re-measurement on one thread
        prepares the model again)."""
        from . import machine

        beside = " beside eager" if REFERENCE in companions else ""
        progress.update(f"timing (batch {self.spec.batch_size}{beside})")
        timing, load, disturbed = self._timed_once(prepared, batch, rules, companions)
        why = remeasure_reason(timing.stats, disturbed, self._host_moved_it(timing))
        remeasured = None
        if why:
            threads = result.threads
            first = {"p50": timing.stats.p50, "ci95_within": timing.stats.ci95_within, "pace": load.pace,
                     "threads": threads, "machine": load.as_dict(), "why": why}
            # Not under a thread sweep: there the count is the row's identity.
            if (self.device == "cpu" and threads and threads > 1 and self.spec.threads_requested is None
                    and machine.busy_reasons(load.as_dict())):
                # Threads of one call wait on a sibling that other processes keep off a core.
                how = "on 1 thread (other processes compete for the cores)"
                prepared = self._prepare_again(prepared, module, ctx, 1, result)
                if REFERENCE in companions:  # the reference follows: equal threads on both sides
                    companions = {**companions, REFERENCE: dataclasses.replace(companions[REFERENCE], threads=1)}
            else:
                how = "for twice as long"
            progress.update(f"timing again {how} ({why})")
            timing, load, disturbed = self._timed_once(prepared, batch, rules.longer(), companions)
            remeasured = {"how": how, "first": first}
            # "before" is before the cell's first measurement
            load.load_before = first["machine"].get("load_before", load.load_before)
        hand_to_benchmark(self.benchmark, timing.seconds)
        self.companions, self.paired = timing.companions, timing.paired
        result.machine = load.as_dict()
        result.timing_window = {"start": timing.window[0], "end": timing.window[1]}
        # Between sessions: this cell, in this configuration, in earlier sessions on this machine.
        from . import tuning

        parts = (*self._choice_parts(), result.threads, result.provider)
        earlier = tuning.earlier_p50s(self.bench.cache, parts)
        stats = timing.stats.with_sessions(session_spread(earlier), len(earlier), rules.target_ci,
                                           pace_spread(load.pace, machine.PACE_TOLERANCE), disturbed,
                                           host_moved_it=self._host_moved_it(timing))
        stats.remeasured = remeasured
        if REFERENCE in timing.paired and self.reference_label:
            # Drift cancels out of a ratio, so any undisturbed session's speedup joins its history.
            result.speedup = self._speedup(timing.paired[REFERENCE], self.reference_label, parts,
                                           remember=disturbed is None, threads=companions[REFERENCE].threads)
        if at_usual_pace(load.pace, machine.PACE_TOLERANCE):
            # Every session at the machine's usual pace counts, disturbed ones too (leaving out the
            # sessions that strayed would understate how far sessions stray); one timed while the
            # machine ran slow owes its deviation to that, which its own pace term states.
            tuning.add_session(self.bench.cache, parts, {"p50": stats.p50, "ci95_within": stats.ci95_within,
                                                         "stable": stats.stable, "pace": load.pace,
                                                         "others_cpu": result.machine["others_cpu"]}, SESSION_HISTORY)
        return stats, prepared

    @staticmethod
    def _host_moved_it(timing: Timing) -> Optional[bool]:
        """Whether the host's drift explains the cell's spread (``stats.own_spread``). With an eager
        reference, drift cancels out of their paired ratio: a ratio that spreads under half as much as
        the cell says the host moved both. Without one, a pace probe that swung at least half as much
        says the same. None: nothing ran beside the cell's calls."""
        within = timing.stats.ci95_within or 0.0
        paired = timing.paired.get(REFERENCE)
        if paired is not None and math.isfinite(paired[1]):
            return paired[1] < within / 2
        if timing.probe_within is None:
            return None
        return timing.probe_within >= within / 2

    def _timed_once(self, prepared: Prepared, batch: torch.Tensor, rules: TimingRules,
                    companions: dict[str, Companion]) -> tuple[Timing, Any, Optional[str]]:
        from . import machine

        monitor = machine.Monitor()
        timing = time_cell(prepared.bind(batch), rules, companions, monitor.tick,
                           top_up=REFERENCE if REFERENCE in companions else None)
        load = monitor.finish()
        load.pace = self._pace(timing.pace)
        load.pace_probe_us = statistics.median(timing.pace) * 1e6 if timing.pace else None
        return timing, load, machine.disturbance(load.as_dict())

    def _speedup(self, paired: tuple[float, float, int], reference: str, parts: tuple, remember: bool,
                 threads: Optional[int] = None) -> Speedup:
        """The paired speedup with its interval: within this session (chunk by chunk) and between
        sessions (this cell's earlier paired speedups), in quadrature."""
        from . import tuning

        value, within, chunks = paired
        # Its own history, beside the p50's. "equal threads": speedups timed with eager at its own
        # row's thread count (and, earlier, beside spinning ORT sessions) measured something else,
        # and must not widen today's.
        key = (*parts, "speedup over", reference, "paired at equal threads")
        earlier = tuning.earlier_p50s(self.bench.cache, key)
        between = session_spread(earlier)
        total = math.sqrt(within ** 2 + between ** 2) if math.isfinite(within) else math.inf
        if remember:
            tuning.add_session(self.bench.cache, key, {"p50": value, "ci95_within": within}, SESSION_HISTORY)
        return Speedup(value, total, True, reference, within, between, chunks, threads)

    def _pace(self, probes: list[float]) -> Optional[float]:
        """How much slower than its usual the machine ran over these probes (None: no reference yet).
        The probes join this process's record, and its 10th percentile is remembered for later sessions."""
        from . import machine, tuning

        if not self.bench.pace_loaded:
            machine.PACE.remembered = tuning.earlier_paces(self.bench.cache)
            self.bench.pace_loaded = True
        machine.PACE.add(probes)
        own = machine.PACE.own()
        if own is not None:
            tuning.remember_pace(self.bench.cache, own)
        return machine.pace_of(probes, machine.PACE.reference())

    def _prepare_again(self, old: Prepared, module: torch.nn.Module, ctx: PrepareContext, threads: int,
                       result: R.CellResult) -> Prepared:
        old.close()
        torch.set_num_threads(threads)
        ctx.threads = threads
        with torch.inference_mode(False):
            prepared = self.backend.prepare(module, ctx)
        result.threads = threads
        result.provider = getattr(prepared, "provider", self.spec.backend)
        return prepared

    def _device_memory(self) -> Any:
        if self.device != "cuda":
            return _NoDeviceMemory()
        from .gpu import DeviceMemory

        return DeviceMemory(torch_allocator=bool(getattr(self.backend, "uses_torch_allocator", False)))

    # -- preparation and thread choice ------------------------------------------------------
    def _choice_parts(self, backend: Optional[str] = None, precision: Optional[str] = None) -> tuple:
        """The cell, as remembered choices and earlier sessions are keyed (with the machine, in tuning.py)."""
        return (self.model.key, backend or self.spec.backend, self.spec.batch_size, precision or self.spec.precision,
                self.device, self.spec.dataset, tuple(self.model.info.input_shape))

    def _prepare(self, module: torch.nn.Module, ctx: PrepareContext, batch: torch.Tensor, result: R.CellResult) -> Prepared:
        """Prepare the model; on the CPU with --cnn-threads=auto, once per thread candidate
        (``threadchoice``), compared interleaved with the machine to itself; the choice is remembered."""
        self._batch = batch
        settings = self.bench.settings
        cell = self._choice_parts()
        option = self.spec.threads_requested or settings.threads  # a sweep's count, else --cnn-threads (None: auto)
        choice = threadchoice.candidates(self.device, option, self.bench.chosen_threads, cell, self.bench.cache,
                                         settings.reprobe, torch.get_num_threads())
        candidates = choice.candidates
        options: dict[int, tuple[Prepared, float]] = {}
        comparison = None
        try:
            with self.lock.shared():
                for threads in candidates:
                    torch.set_num_threads(threads)
                    ctx.threads = threads
                    started = time.perf_counter()
                    options[threads] = (self.backend.prepare(module, ctx), time.perf_counter() - started)
            if len(candidates) > 1:
                calls = {n: options[n][0].bind(batch) for n in candidates}
                progress.update(f"choosing threads: {' or '.join(map(str, candidates))}")
                with torch.inference_mode(), self.lock.exclusive():
                    comparison = threadchoice.probe(calls, torch.set_num_threads)
        except BaseException:
            for unused, _ in options.values():
                unused.close()
            raise
        threads = comparison.choice if comparison is not None else candidates[0]
        ctx.threads = threads
        if self.device == "cpu" and option is None:
            self.bench.chosen_threads[cell] = threads  # this session; later ones only where the probe decided
            if comparison is not None:
                threadchoice.remember(self.bench.cache, cell, threads, comparison)
        prepared = options[threads][0]
        # The first preparation is the one that built (or loaded) the artifact: report its cost.
        first, prepare_s = options[candidates[0]]
        for other, (unused, _) in options.items():
            if other != threads:
                unused.close()
        torch.set_num_threads(threads)
        probes_ms = {str(n): ms for n, ms in comparison.medians_ms.items()} if comparison is not None else None
        result.set(threads=threads, thread_probe_ms=probes_ms, prepare_s=prepare_s,
                      prepare_cached=bool(getattr(first, "cache_hit", False)),
                      thread_choice={"source": choice.source, "verdict": comparison.verdict if comparison is not None else None,
                                     "decided": comparison.decided if comparison is not None else None})
        return prepared

    def _scaling(self, prepared: Prepared, module: torch.nn.Module, ctx: PrepareContext, batch: torch.Tensor,
                 result: R.CellResult) -> None:
        """Under a thread sweep, a row at n > 1 threads: its scaling efficiency (time at 1 thread / time at
        n / n), 1 and n threads compared side by side as the thread probe compares them, not two rows' p50s.
        A backend on torch's pool switches the count between calls; others get a 1-thread instance."""
        n = self.spec.threads_requested
        result.thread_pinning = threadchoice.pinning(prepared)
        if self.device != "cpu" or not n or n <= 1 or result.threads != n or benchmark_disabled(self.request.config):
            return
        one: Optional[Prepared] = None
        try:
            if thread_use(self.backend) == THREADS_TORCH:
                call = prepared.bind(batch)
                calls = {1: call, n: call}
            else:
                torch.set_num_threads(1)
                with torch.inference_mode(False), self.lock.shared():
                    one = self.backend.prepare(module, dataclasses.replace(ctx, threads=1))
                calls = {1: one.bind(batch), n: prepared.bind(batch)}
            progress.update(f"scaling: 1 thread beside {n}")
            with torch.inference_mode(), self.lock.exclusive():
                comparison = threadchoice.probe(calls, torch.set_num_threads)
            result.scaling = threadchoice.scaling(n, comparison)
        finally:
            if one is not None:
                one.close()
            torch.set_num_threads(n)

    def _time_on_device(self, result: R.CellResult, call: Callable[[], Any], rules: TimingRules) -> None:
        """Compute latency with the input already on the GPU, as trtexec's GPU compute time."""
        from .gpu import time_device_calls
        from .stats import latency_stats
        from .timing import plan_timing

        progress.update("timing on the device")
        rounds = plan_timing(call, rules).rounds
        wall, device = time_device_calls(call, rounds, events=device_events(self.backend))
        result.compute_latency_ms = latency_stats(wall, rules.target_ci).as_dict()
        if device:
            result.device_time_ms = latency_stats(device, rules.target_ci).as_dict()

    # -- accuracy -----------------------------------------------------------------------------
    def _accuracy(self, result: R.CellResult, prepared: Prepared, module: torch.nn.Module, ctx: PrepareContext,
                  images: torch.Tensor, labels: torch.Tensor, content_id: str, reference: torch.Tensor) -> None:
        spec, bench, model = self.spec, self.bench, self.model
        acc_key = (model.key, content_id, spec.backend, self.device, spec.precision)
        if acc_key not in bench.accuracy:
            if spec.backend == "eager" and spec.precision == "fp32":
                # Eager fp32 is the reference itself, which is kept on disk: a warm run does not
                # repeat this pass (``reference_cached`` in the result says so).
                bench.accuracy[acc_key] = (accuracy_from_logits(reference, labels),
                                           bench.reference_from_disk(model, content_id, self.device))
            else:
                bench.accuracy[acc_key] = self._backend_accuracy(prepared, module, ctx, images, labels, content_id)
        acc, from_disk = bench.accuracy[acc_key]
        result.set(samples=acc.samples, top1=acc.top1, top5=acc.top5, accuracy_cached=from_disk)
        reference_acc = accuracy_from_logits(reference, labels)
        self.reference_top1 = reference_acc.top1
        self._warn_if_labels_look_wrong(result, reference, labels)
        result.reference_cached = bench.reference_from_disk(model, content_id, self.device)
        agree: Agreement = agreement(acc.logits, reference)
        result.agreement = agree.as_dict()
        result.reference_top1 = reference_acc.top1
        result.reference_top5 = reference_acc.top5
        # The accuracy cost of this row (precision, backend) in points against eager fp32 on the same images.
        result.delta_top1_pp = _points(acc.top1, reference_acc.top1)
        result.delta_top5_pp = _points(acc.top5, reference_acc.top5)
        if not (spec.backend == "eager" and spec.precision == "fp32"):
            result.accuracy_cost = self._accuracy_cost(acc.logits, reference, labels, bool(result.accuracy_valid))

    def _accuracy_cost(self, logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor,
                       judged: bool) -> Optional[R.AccuracyCost]:
        """The row against eager fp32 image by image: the paired difference, its interval, its verdict
        against --cnn-accuracy-budget (none where accuracy means nothing)."""
        from .stats import paired_difference

        top1 = paired_counts(logits, reference, labels, 1)
        if top1 is None or not len(labels):
            return None
        top5 = paired_counts(logits, reference, labels, 5)
        return R.AccuracyCost.from_pairs(paired_difference(*top1), paired_difference(*top5) if top5 else None,
                                         self.bench.settings.accuracy_budget, judged)

    def _warn_if_labels_look_wrong(self, result: R.CellResult, reference: torch.Tensor, labels: torch.Tensor) -> None:
        """Trained weights near chance on labelled data: a warning and a note naming the likely cause."""
        from .accuracy import TRAINED_WEIGHTS, near_chance_warning

        if not result.accuracy_valid or result.weights not in TRAINED_WEIGHTS:
            return
        text = near_chance_warning(reference.argmax(1), labels, reference.shape[1], result.dataset or "")
        if text and text not in result.notes:
            import warnings

            result.notes.append(text)
            warnings.warn(UserWarning(f"cnnbench: {result.model} on {result.dataset}: {text}"))

    def _backend_accuracy(self, prepared: Prepared, module: torch.nn.Module, ctx: PrepareContext,
                          images: torch.Tensor, labels: torch.Tensor, content_id: str) -> tuple[Any, Optional[bool]]:
        """The backend's accuracy pass and whether it came from disk (None: not cacheable). Its logits
        are cached where the backend names what runs (``artifact_id``), so a warm run skips the pass."""
        spec = self.spec

        def compute() -> torch.Tensor:
            progress.update(f"accuracy pass ({spec.backend} {spec.precision}, every core)", 0, len(labels), "images")
            return self._evaluate_on_all_cores(prepared, module, ctx, images, labels).logits

        artifact_id = getattr(prepared, "artifact_id", None)
        if not artifact_id:
            return accuracy_from_logits(compute(), labels), None
        logits, from_disk = self.bench.backend_logits(artifact_id, self.model, content_id, self.device, len(labels), compute)
        return accuracy_from_logits(logits, labels), from_disk

    def _evaluate_on_all_cores(self, prepared: Prepared, module: torch.nn.Module, ctx: PrepareContext,
                               images: torch.Tensor, labels: torch.Tensor) -> Any:
        """The accuracy pass is not timed, so it runs on every core: torch-threaded backends switch
        their pool for it; those whose thread count is fixed when prepared (ONNX Runtime, OpenVINO)
        get an instance of their own (the artifact comes from the cache)."""
        from .environment import physical_cores

        cores = physical_cores()
        runner, extra = prepared, None
        use = thread_use(self.backend)
        if self.device == "cpu" and use == THREADS_AT_PREPARE and (ctx.threads or cores) < cores:
            extra = self.backend.prepare(module, dataclasses.replace(ctx, threads=cores))
            runner = extra
        try:
            batch_size = min(accuracy_batch(images), getattr(runner, "max_batch", None) or ACCURACY_BATCH)
            with all_cores() if use == THREADS_TORCH else contextlib.nullcontext():
                return evaluate(runner.run, images, labels, batch_size, self.model.info.num_classes)
        finally:
            if extra is not None:
                extra.close()

    # -- what suites call ------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """Add a finding to this cell's row (shown beside its status, kept in the result files)."""
        self.run().notes.append(text)
        self._publish()

    def check_accuracy(self, min_top1: Optional[float] = None, min_top5: Optional[float] = None,
                       min_relative_to_eager: Optional[float] = None, rule: str = "") -> None:
        """Assert accuracy thresholds (fractions).

        Where accuracy means nothing (random weights, unlabelled data), nothing is asserted: the
        row says so ("accuracy not asserted: ..."), and the cell still passes on its other checks,
        unless ``--cnn-require-accuracy`` makes that a failure. ``rule`` says where ``min_top1``
        comes from, for the failure message.
        """
        result = self.run()
        if not result.accuracy_valid:
            why = "synthetic data has no real labels" if result.weights != "random" else "random weights"
            text = f"accuracy not asserted: {why}"
            result.accuracy_asserted = False
            if text not in result.notes:
                result.notes.append(text)
            self._publish()
            if self.bench.settings.require_accuracy:
                detail = result.weights_note if result.weights == "random" else None
                pytest.fail(f"{text} (--cnn-require-accuracy)" + (f": {detail}" if detail else ""), pytrace=False)
            return
        result.accuracy_asserted = True
        self._publish()
        label = self.spec.id
        if min_top1 is not None:
            assert result.top1 >= min_top1, f"{label}: top-1 {result.top1:.4f} < {min_top1:.4f}" + (f" ({rule})" if rule else "")
        if min_top5 is not None and result.top5 is not None:
            assert result.top5 >= min_top5, f"{label}: top-5 {result.top5:.4f} < {min_top5}"
        if min_relative_to_eager is not None and self.reference_top1:
            ratio = result.top1 / self.reference_top1
            assert ratio >= min_relative_to_eager, (
                f"{label}: top-1 {result.top1:.4f} is {ratio:.2%} of eager's {self.reference_top1:.4f} (< {min_relative_to_eager:.0%})")

    def check_agreement(self, max_rel_err: float, min_top1_agree: float) -> None:
        """Assert the backend's logits match eager's: the check that holds even with random weights."""
        result = self.run()
        agree = result.agreement
        if self.spec.backend == "eager" and self.spec.precision == "fp32":
            return
        label = self.spec.id
        assert agree["rel_err"] <= max_rel_err, f"{label}: max relative logit error vs eager {agree['rel_err']:.2e} > {max_rel_err:.0e}"
        if agree["meaningful"]:
            assert agree["top1_agree"] >= min_top1_agree, f"{label}: top-1 agrees with eager on {agree['top1_agree']:.2%} < {min_top1_agree:.0%}"

    def check_precision_cost(self, max_top1_drop_pp: float, max_top5_drop_pp: Optional[float] = None) -> None:
        """Judge this row's accuracy cost against eager fp32 on the same images, paired image by image:
        the 95% interval of the change in top-1 (and top-5) points against the loss allowed
        (``stats.cost_verdict``). *exceeds* fails; *within* passes; *inconclusive* (the interval
        straddles the allowance) passes with the verdict in the row, and fails with --cnn-strict.

        Nothing is skipped: where accuracy means nothing (random weights, unlabelled data) nothing is
        asserted and the row says so, as ``check_accuracy`` does (a failure with --cnn-require-accuracy)."""
        from .stats import EXCEEDS, INCONCLUSIVE, cost_verdict

        result = self.run()
        if not result.accuracy_valid:
            self.check_accuracy()  # notes why (or fails with --cnn-require-accuracy); asserts nothing
            return
        cost: Optional[R.AccuracyCost] = result.accuracy_cost
        if cost is None:  # eager fp32: the reference itself
            return
        label = self.spec.id
        how = f"; calibration: {result.calibration}" if result.calibration else ""
        verdicts, failures, open_ = {}, [], []
        top5 = cost.top5 or {}
        for name, limit, delta, ci, eager_only, row_only in (
                ("top-1", max_top1_drop_pp, cost.delta_top1_pp, cost.ci95_pp, cost.eager_only, cost.row_only),
                ("top-5", max_top5_drop_pp, cost.delta_top5_pp, top5.get("ci95_pp"), top5.get("eager_only"),
                 top5.get("row_only"))):
            if limit is None:
                continue
            assert delta is not None and ci is not None, f"{label}: no {name} figure to compare with eager fp32's"
            verdict = verdicts[name] = cost_verdict(ci[0], ci[1], limit)
            text = (f"{name} {delta:+.2f} pt vs eager fp32, 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}] ({cost.method}); "
                    f"{eager_only} images right only in eager fp32, {row_only} only in this row, of {cost.n}; "
                    f"allowed loss {limit:g} pt: {verdict}")
            if verdict == EXCEEDS:
                failures.append(text)
            elif verdict == INCONCLUSIVE:
                open_.append(text)
        cost.check = {"max_top1_drop_pp": max_top1_drop_pp, "max_top5_drop_pp": max_top5_drop_pp, "verdict": verdicts}
        for text in open_:
            note = f"accuracy cost inconclusive: {text}"
            if note not in result.notes:
                result.notes.append(note)
        self._publish()
        if failures:
            pytest.fail(f"{label}: accuracy cost exceeds the allowance: " + "; ".join(failures) + how, pytrace=False)
        if open_ and self.bench.settings.strict:
            pytest.fail(f"{label}: accuracy cost inconclusive (--cnn-strict): " + "; ".join(open_) + how, pytrace=False)
