"""One cell, measured: what the ``cnnbench`` fixture hands a test.

``CellRunner.run()`` prepares the model on the backend, runs the accuracy pass, times
the cell and measures memory, then records the result for the table. The shared,
per-process state (models, datasets, references) is the ``Workbench``'s. Imported only
when a cell runs, so torch stays out of collection.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

from . import registry
from . import results as R
from .backends.base import PrepareContext, Prepared
from .core import BuiltModel, CellSkip, CellSpec
from .measure import (SESSION_HISTORY, UNSTABLE_CI, Agreement, HostMemory, LatencyStats, TimingRules, accuracy_from_logits,
                      agreement, at_usual_pace, compare_interleaved, current_rss_mb, evaluate, pace_spread, session_spread,
                      time_again, time_with_benchmark)
from .machine import unstable_message
from .workbench import ACCURACY_BATCH, CellModel, ModelInfo, Workbench, accuracy_batch, device_name, scale_uint8


class FixtureModelError(Exception):
    """What a user's ``cnn_model`` fixture gave cannot be benchmarked; the message names the fixture."""


def check_fixture_model(value: Any, spec: CellSpec, marker: dict[str, Any]) -> tuple[BuiltModel, ModelInfo]:
    """Turn what a user's ``cnn_model`` fixture returned into a model and its shapes, or say
    clearly why it cannot be benchmarked (naming the fixture and the dataset options)."""
    where = f"{spec.model_fixture} (param {spec.model!r})" if spec.model else str(spec.model_fixture)
    if isinstance(value, BuiltModel):
        built = value
    elif isinstance(value, torch.nn.Module):
        built = BuiltModel(value, scale_uint8, "user", f"module from {spec.model_fixture}", "scale-uint8")
    else:
        raise FixtureModelError(f"{where} returned {type(value).__name__}, not a torch.nn.Module or a "
                                "pytest_cnnbench.BuiltModel; return the model to benchmark")
    if not isinstance(built.module, torch.nn.Module):
        raise FixtureModelError(f"{where} returned a BuiltModel whose module is a {type(built.module).__name__}, "
                                "not a torch.nn.Module")
    if not spec.dataset:
        raise FixtureModelError(
            f"{where}: no dataset to feed the model: mark the test with @pytest.mark.cnnbench(dataset=...) or run with "
            f"--cnn-dataset=...; datasets: {', '.join(registry.datasets.names())}")
    dataset_meta = registry.datasets.get(spec.dataset).meta
    if not isinstance(value, BuiltModel) and dataset_meta.get("bare_preprocess") is not None:
        # e.g. ImageNet folders hold PIL images: a bare module gets the standard resize/crop/normalize.
        preprocess, preprocess_id = dataset_meta["bare_preprocess"]()
        built = BuiltModel(built.module, preprocess, "user", built.weights_note, preprocess_id)
    input_shape = built.input_shape or marker.get("input_shape") or dataset_meta.get("input_shape")
    if not input_shape:
        raise FixtureModelError(
            f"{where}: the {spec.dataset} dataset has no fixed input shape: give one with "
            "BuiltModel(..., input_shape=(C, H, W)) or @pytest.mark.cnnbench(input_shape=(C, H, W))")
    input_shape = tuple(int(d) for d in input_shape)
    try:
        with torch.inference_mode():
            out = built.module.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise FixtureModelError(f"{where}: the model fails on a batch of 2 inputs of shape {input_shape}: "
                                f"{type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FixtureModelError(f"{where}: for a batch of 2 inputs of shape {input_shape} the model returned {shape}; "
                                "a classifier must return logits of shape (batch, classes)")
    num_classes = int(built.num_classes or marker.get("num_classes") or out.shape[1])
    if out.shape[1] != num_classes:
        raise FixtureModelError(f"{where}: the model returns {out.shape[1]} logits per input but says it has "
                                f"{num_classes} classes")
    dataset_classes = dataset_meta.get("num_classes")
    if dataset_classes and num_classes != dataset_classes:
        raise FixtureModelError(f"{where}: the model predicts {num_classes} classes but the {spec.dataset} dataset "
                                f"has {dataset_classes}; choose a matching dataset")
    name = built.name or spec.model or type(built.module).__name__.lower()
    return built, ModelInfo(name, input_shape, num_classes)


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
        self.result: Optional[dict[str, Any]] = None
        self.reference_top1: Optional[float] = None
        self.backend = registry.backends.create(spec.backend)
        self.companions: dict[str, LatencyStats] = {}
        self.paired: dict[str, tuple[float, int]] = {}  # companion -> (cell / companion time, chunk by chunk; chunks)

    def run(self, companions: Optional[dict[str, Callable[[], Any]]] = None) -> dict[str, Any]:
        """Prepare, evaluate accuracy, time, measure memory; record and return the result dict.

        ``companions``: other calls to time in the same loop as the cell, alternating with it
        in short chunks (see ``measure.BlockSchedule``); their figures land in
        ``self.companions``, the cell's time over each companion's, chunk by chunk, in
        ``self.paired``, and both in the result's ``companions_ms``. The self-checks use them.
        """
        if self.result is not None:
            return self.result
        spec, bench, model = self.spec, self.bench, self.model
        built = model.built
        result = R.empty_result({**self.identity, "device": self.device})
        result["device_name"] = device_name(self.device)
        phases: dict[str, float] = result["phases_s"]
        phases["model"] = bench.take_build_seconds()
        try:
            with _phase(phases, "dataset"):
                dataset, images, labels = bench.dataset(spec, built, model.info)
        except CellSkip as exc:
            pytest.skip(str(exc))
        result.update(weights=built.weights_kind, weights_note=built.weights_note, weights_id=built.weights_id or None)
        result["accuracy_valid"] = built.accuracy_meaningful and bool(dataset.labels_meaningful)

        batch = images[: spec.batch_size]
        if len(batch) < spec.batch_size:  # small datasets: tile samples up to the batch size
            batch = images[torch.arange(spec.batch_size) % len(images)]
        ctx = bench.prepare_ctx(spec, self.device, model)
        # The eager reference first, outside the memory span: its pass (when not cached) is not
        # the cell's, and on a GPU its allocations would inflate the cell's device peak.
        with _phase(phases, "accuracy"):
            reference = bench.reference(model, self.device, images, labels, dataset.content_id, spec)
        if spec.precision == "int8":  # calibration images, held apart from the evaluated ones where the data allows
            with _phase(phases, "dataset"):
                calibration = bench.calibration(spec, built, model.info)
            ctx.calibration, ctx.calibration_id, ctx.calibration_note = calibration.images, calibration.id, calibration.note
        threads_before = torch.get_num_threads()
        prepared: Optional[Prepared] = None
        memory = HostMemory()
        device_memory = self._device_memory()
        stats = None
        loadgen = None
        try:
            with memory, device_memory:
                with _phase(phases, "prepare"):
                    prepared = self._prepare(built.module, ctx, batch, result)
                device_memory.sample()
                result["provider"] = getattr(prepared, "provider", self.spec.backend)
                result["math"] = getattr(prepared, "math", None)
                if ctx.calibration_note:  # the backend's own account (images and method) where it gives one
                    result["calibration"] = getattr(prepared, "calibration", None) or ctx.calibration_note
                result["quantization"] = getattr(prepared, "quantization", None)
                if getattr(prepared, "artifact_bytes", None) is not None:
                    result["artifact_mb"] = prepared.artifact_bytes / 2**20

                with _phase(phases, "accuracy"):
                    self._accuracy(result, prepared, images, labels, dataset.content_id, reference)
                device_memory.sample()

                # Requested only now, so a cell that skips or fails earlier never touches pytest-benchmark.
                self.benchmark = self.request.getfixturevalue("benchmark")
                s = bench.settings
                rules = TimingRules(s.warmup, s.min_rounds, s.max_rounds, s.max_time, s.target_ci, s.min_time)
                with _phase(phases, "timing"), torch.inference_mode():
                    stats, prepared = self._time(prepared, batch, rules, built.module, ctx, result, companions)
                    # Optional members of the protocol: a user's backend may have only run/bind/close.
                    bind_device = getattr(prepared, "bind_device", None)
                    device_call = bind_device(batch) if bind_device is not None else None
                    if device_call is not None and stats is not None:
                        self._time_on_device(result, device_call, rules)
            if stats is not None:
                result["latency_ms"] = stats.as_dict()
                result["throughput_ips"] = spec.batch_size * 1000.0 / stats.p50
            result["memory_mb"].update(host_peak=memory.peak_mb, host_delta=memory.delta_mb,
                                       device_peak=device_memory.peak_mb, device_peak_source=device_memory.source)
            # -- MLPerf LoadGen scenarios (--cnn-scenario; pytest_cnnbench/mlperf/cell.py) --
            from .mlperf.cell import run_for_cell
            loadgen = run_for_cell(bench.settings, spec, prepared, images, labels, stats, result, self.item.name)
        finally:
            if prepared is not None:
                prepared.close()
            del prepared
            torch.set_num_threads(threads_before)
            gc.collect()
        # What the process holds once the cell is released: it must not grow from cell to cell.
        result["memory_mb"]["host_after"] = current_rss_mb()
        self.result = result
        self.item.user_properties.append((R.RESULT_PROPERTY, result))
        if stats is not None and self.benchmark is not None and not getattr(self.benchmark, "disabled", False):
            self.benchmark.extra_info.update({"cnnbench": {k: v for k, v in result.items() if k != "test"}})
        from .mlperf.cell import finish_cell
        finish_cell(loadgen)  # fails or skips the cell, its result recorded (MLPerf LoadGen scenarios)
        if stats is not None and stats.stable is False and bench.settings.strict:
            pytest.fail(f"{unstable_message(result)} (--cnn-strict)", pytrace=False)
        return result

    # -- timing ---------------------------------------------------------------------------------
    def _time(self, prepared: Prepared, batch: torch.Tensor, rules: TimingRules, module: torch.nn.Module,
              ctx: PrepareContext, result: dict[str, Any],
              companions: Optional[dict[str, Callable[[], Any]]]) -> tuple[Optional[LatencyStats], Prepared]:
        """Time the cell; measure it again once if its spread is wide; add the between-session term.

        Returns the statistics (None with --benchmark-disable) and the prepared model timed last
        (a re-measurement on one thread prepares the model again)."""
        from . import machine, tuning

        monitor = machine.Monitor()
        timing = time_with_benchmark(self.benchmark, prepared.bind(batch), rules, companions, monitor.tick)
        if timing is None:
            return None, prepared
        stats, pace = timing.stats, self._pace(timing.pace)
        if stats.ci95_rel > UNSTABLE_CI or pace_spread(pace, machine.PACE_TOLERANCE):
            load = monitor.finish().as_dict()
            threads = result.get("threads")
            first = {"p50": stats.p50, "ci95_within": stats.ci95_rel, "pace": pace, "threads": threads, "machine": load}
            if self.device == "cpu" and threads and threads > 1 and machine.busy_reasons(load):
                # Threads of one call wait on a sibling that other processes keep off a core.
                how = "on 1 thread (other processes compete for the cores)"
                prepared = self._prepare_again(prepared, module, ctx, 1, result)
            else:
                how = "for twice as long"
            # A slow stretch of the host lasts seconds: start the second measurement outside it.
            waited, pace_after_wait = machine.wait_for_usual_pace()
            monitor = machine.Monitor()
            timing = time_again(self.benchmark, prepared.bind(batch), rules.longer(), companions, monitor.tick)
            stats, pace = timing.stats, self._pace(timing.pace)
            stats.remeasured = {"how": how, "first": first, "waited_s": round(waited, 2), "pace_after_wait": pace_after_wait}
        self.companions, self.paired = timing.companions, timing.paired
        if companions is not None:
            result["companions_ms"] = {name: {**c.as_dict(), "paired_ratio": timing.paired.get(name, (None,))[0]}
                                       for name, c in timing.companions.items()}
        load = monitor.finish()
        if stats.remeasured is not None:  # "before" is before the cell's first measurement
            first_load = stats.remeasured["first"]["machine"]
            load.load_before = first_load.get("load_before", load.load_before)
            if first_load.get("load_during") is not None and load.load_during is not None:
                load.load_during = max(load.load_during, first_load["load_during"])
        load.pace = pace
        load.pace_probe_us = statistics.median(timing.pace) * 1e6 if timing.pace else None
        result["machine"] = load.as_dict()
        # Between sessions: this cell, in this configuration, in earlier sessions on this machine.
        parts = (*self._choice_parts(), result.get("threads"), result.get("provider"))
        earlier = tuning.earlier_p50s(self.bench.cache, parts)
        pace_term = pace_spread(pace, machine.PACE_TOLERANCE)
        stats = stats.with_sessions(session_spread(earlier), len(earlier), rules.target_ci, pace_term)
        if at_usual_pace(pace, machine.PACE_TOLERANCE):
            # Every session at the machine's usual pace counts, unstable ones too (leaving out the
            # sessions that strayed would understate how far sessions stray); one timed while the
            # machine ran slow owes its deviation to that, which its own pace term states.
            tuning.add_session(self.bench.cache, parts, {"p50": stats.p50, "ci95_within": stats.ci95_within,
                                                         "stable": stats.stable, "pace": pace,
                                                         "load_before": result["machine"]["load_before"],
                                                         "others_cpu": result["machine"]["others_cpu"]}, SESSION_HISTORY)
        return stats, prepared

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
                       result: dict[str, Any]) -> Prepared:
        old.close()
        torch.set_num_threads(threads)
        ctx.threads = threads
        with torch.inference_mode(False):
            prepared = self.backend.prepare(module, ctx)
        result["threads"] = threads
        result["provider"] = getattr(prepared, "provider", self.spec.backend)
        return prepared

    def _device_memory(self) -> Any:
        if self.device != "cuda":
            return _NoDeviceMemory()
        from .gpu import DeviceMemory

        return DeviceMemory(torch_allocator=bool(getattr(self.backend, "uses_torch_allocator", False)))

    # -- preparation and thread choice ------------------------------------------------------
    def _choice_parts(self) -> tuple:
        """The cell, as remembered choices and earlier sessions are keyed (with the machine, in tuning.py)."""
        return (self.model.key, self.spec.backend, self.spec.batch_size, self.spec.precision, self.device,
                self.spec.dataset, tuple(self.model.info.input_shape))

    def _thread_candidates(self) -> tuple[list[int], str]:
        """Thread counts to prepare, the robust one (1) first, and where the choice comes from."""
        if self.device != "cpu":
            return [torch.get_num_threads()], "device"
        if self.bench.settings.threads is not None:
            return [self.bench.settings.threads], "option"
        cell = self._choice_parts()
        if cell in self.bench.chosen_threads:
            return [self.bench.chosen_threads[cell]], "this session"
        from . import tuning

        record = tuning.remembered_choice(self.bench.cache, "threads", cell, self.bench.settings.reprobe)
        if record is not None and isinstance(record["choice"], int) and record["choice"] >= 1:
            return [record["choice"]], "remembered"
        from .environment import physical_cores

        cores = physical_cores()
        return ([1, cores] if cores > 1 else [1]), "probed"

    def _prepare(self, module: torch.nn.Module, ctx: PrepareContext, batch: torch.Tensor, result: dict[str, Any]) -> Prepared:
        """Prepare the model; on the CPU with --cnn-threads=auto, with the thread count remembered
        for this machine and cell, or else once per candidate (1 and one per physical core),
        compared interleaved: more threads must be clearly faster to replace one thread, which
        stays fast when other processes take a core (threads waiting on a descheduled sibling
        cost milliseconds). The choice is remembered (tuning.py)."""
        candidates, source = self._thread_candidates()
        options: dict[int, tuple[Prepared, float]] = {}
        comparison = None
        try:
            for threads in candidates:
                torch.set_num_threads(threads)
                ctx.threads = threads
                started = time.perf_counter()
                options[threads] = (self.backend.prepare(module, ctx), time.perf_counter() - started)
            if len(candidates) > 1:
                calls = {n: options[n][0].bind(batch) for n in candidates}
                before = {n: (lambda n=n: torch.set_num_threads(n)) for n in candidates}
                with torch.inference_mode():
                    comparison = compare_interleaved(calls, before)
        except BaseException:
            for unused, _ in options.values():
                unused.close()
            raise
        threads = comparison.choice if comparison is not None else candidates[0]
        ctx.threads = threads
        if self.device == "cpu" and self.bench.settings.threads is None:
            self.bench.chosen_threads[self._choice_parts()] = threads
            if comparison is not None:
                from . import tuning

                tuning.remember_choice(self.bench.cache, "threads", self._choice_parts(), threads, comparison.as_dict())
        prepared = options[threads][0]
        # The first preparation is the one that built (or loaded) the artifact: report its cost.
        first, prepare_s = options[candidates[0]]
        for other, (unused, _) in options.items():
            if other != threads:
                unused.close()
        torch.set_num_threads(threads)
        probes_ms = {str(n): ms for n, ms in comparison.medians_ms.items()} if comparison is not None else None
        result.update(threads=threads, thread_probe_ms=probes_ms, prepare_s=prepare_s,
                      prepare_cached=bool(getattr(first, "cache_hit", False)),
                      thread_choice={"source": source, "verdict": comparison.verdict if comparison is not None else None})
        return prepared

    def _time_on_device(self, result: dict[str, Any], call: Callable[[], Any], rules: TimingRules) -> None:
        """Compute latency with the input already on the GPU, as trtexec's GPU compute time."""
        from .gpu import time_device_calls
        from .measure import latency_stats, plan_rounds

        rounds = plan_rounds(call, rules)
        wall, device = time_device_calls(call, rounds, events=bool(getattr(self.backend, "uses_torch_allocator", False)
                                                                   or self.spec.backend == "trt"))
        result["compute_latency_ms"] = latency_stats(wall, rules.target_ci).as_dict()
        if device:
            result["device_time_ms"] = latency_stats(device, rules.target_ci).as_dict()

    # -- accuracy -----------------------------------------------------------------------------
    def _accuracy(self, result: dict[str, Any], prepared: Prepared, images: torch.Tensor, labels: torch.Tensor,
                  content_id: str, reference: torch.Tensor) -> None:
        spec, bench, model = self.spec, self.bench, self.model
        acc_key = (model.key, content_id, spec.backend, self.device, spec.precision)
        acc = bench.accuracy.get(acc_key)
        if acc is None:
            if spec.backend == "eager" and spec.precision == "fp32":
                # Eager fp32 is the reference itself, which is kept on disk: a warm run does not
                # repeat this pass (``reference_cached`` in the result says so).
                acc = accuracy_from_logits(reference, labels)
            else:
                batch_size = min(accuracy_batch(images), getattr(prepared, "max_batch", None) or ACCURACY_BATCH)
                acc = evaluate(prepared.run, images, labels, batch_size, model.info.num_classes)
            bench.accuracy[acc_key] = acc
        result.update(samples=acc.samples, top1=acc.top1, top5=acc.top5)
        reference_acc = accuracy_from_logits(reference, labels)
        self.reference_top1 = reference_acc.top1
        result["reference_cached"] = bench.reference_from_disk(model, content_id, self.device)
        agree: Agreement = agreement(acc.logits, reference)
        result["agreement"] = agree.as_dict()
        result["reference_top1"] = reference_acc.top1
        result["reference_top5"] = reference_acc.top5
        # The accuracy cost of this row (precision, backend) in points against eager fp32 on the same images.
        result["delta_top1_pp"] = _points(acc.top1, reference_acc.top1)
        result["delta_top5_pp"] = _points(acc.top5, reference_acc.top5)

    # -- what suites call ------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """Add a finding to this cell's row (shown beside its status, kept in the result files)."""
        self.run()["notes"].append(text)

    def check_accuracy(self, min_top1: Optional[float] = None, min_top5: Optional[float] = None,
                       min_relative_to_eager: Optional[float] = None, rule: str = "") -> None:
        """Assert accuracy thresholds (fractions).

        Where accuracy means nothing (random weights, unlabelled data), nothing is asserted: the
        row says so ("accuracy not asserted: ..."), and the cell still passes on its other checks,
        unless ``--cnn-require-accuracy`` makes that a failure. ``rule`` says where ``min_top1``
        comes from, for the failure message.
        """
        result = self.run()
        if not result["accuracy_valid"]:
            why = "synthetic data has no real labels" if result["weights"] != "random" else "random weights"
            text = f"accuracy not asserted: {why}"
            result["accuracy_asserted"] = False
            if text not in result["notes"]:
                result["notes"].append(text)
            if self.bench.settings.require_accuracy:
                detail = result.get("weights_note") if result["weights"] == "random" else None
                pytest.fail(f"{text} (--cnn-require-accuracy)" + (f": {detail}" if detail else ""), pytrace=False)
            return
        result["accuracy_asserted"] = True
        label = self.spec.id
        if min_top1 is not None:
            assert result["top1"] >= min_top1, f"{label}: top-1 {result['top1']:.4f} < {min_top1:.4f}" + (f" ({rule})" if rule else "")
        if min_top5 is not None and result["top5"] is not None:
            assert result["top5"] >= min_top5, f"{label}: top-5 {result['top5']:.4f} < {min_top5}"
        if min_relative_to_eager is not None and self.reference_top1:
            ratio = result["top1"] / self.reference_top1
            assert ratio >= min_relative_to_eager, (
                f"{label}: top-1 {result['top1']:.4f} is {ratio:.2%} of eager's {self.reference_top1:.4f} (< {min_relative_to_eager:.0%})")

    def check_agreement(self, max_rel_err: float, min_top1_agree: float) -> None:
        """Assert the backend's logits match eager's: the check that holds even with random weights."""
        result = self.run()
        agree = result["agreement"]
        if self.spec.backend == "eager" and self.spec.precision == "fp32":
            return
        label = self.spec.id
        assert agree["rel_err"] <= max_rel_err, f"{label}: max relative logit error vs eager {agree['rel_err']:.2e} > {max_rel_err:.0e}"
        if agree["meaningful"]:
            assert agree["top1_agree"] >= min_top1_agree, f"{label}: top-1 agrees with eager on {agree['top1_agree']:.2%} < {min_top1_agree:.0%}"

    def check_precision_cost(self, max_top1_drop_pp: float, max_top5_drop_pp: Optional[float] = None) -> None:
        """Assert this row's top-1 (and top-5) are at most that many percentage points below eager fp32's
        on the same images: the accuracy a lower precision (or another backend) may cost.

        Nothing is skipped: where accuracy means nothing (random weights, unlabelled data) nothing is
        asserted and the row says so, as ``check_accuracy`` does (a failure with --cnn-require-accuracy)."""
        result = self.run()
        if not result["accuracy_valid"]:
            self.check_accuracy()  # notes why (or fails with --cnn-require-accuracy); asserts nothing
            return
        label = self.spec.id
        for name, drop, limit in (("top-1", result["delta_top1_pp"], max_top1_drop_pp),
                                  ("top-5", result["delta_top5_pp"], max_top5_drop_pp)):
            if limit is None:
                continue
            assert drop is not None, f"{label}: no {name} figure to compare with eager fp32's"
            key = "top1" if name == "top-1" else "top5"
            how = f"; calibration: {result['calibration']}" if result.get("calibration") else ""
            assert -drop <= limit, (
                f"{label}: {name} {result[key]:.2%} is {-drop:.2f} pt below eager fp32's {result['reference_' + key]:.2%} "
                f"on the same {result['samples']} images (allowed: {limit} pt){how}")
