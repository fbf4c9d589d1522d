"""The measuring side: builds models and datasets (cached per process), runs one cell, records it.

``Workbench`` holds per-process state; ``CellRunner`` is what the ``cnnbench``
fixture hands a test. Imported only when a cell runs, so torch stays out of
collection.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

from . import registry
from . import results as R
from .backends.base import PrepareContext, Prepared, model_fingerprint
from .cache import ArtifactCache, hash_parts
from .core import BuiltModel, CellSkip, CellSpec, DatasetContext, ModelContext
from .measure import (Agreement, HostMemory, TimingRules, accuracy_from_logits, agreement, current_rss_mb, evaluate,
                      fastest, probe, time_with_benchmark)
from .options import Settings

ACCURACY_BATCH = 250  # large batches for the accuracy pass: it is not the timed part...
# ...but at most ~5 MB of fp32 input per batch (8 ImageNet images): on a CPU, ResNet50 runs 21 img/s
# at batch 8 and 15 img/s at 27 (activations fall out of cache), and the timed part is not affected.
ACCURACY_BATCH_VALUES = 1_250_000


def accuracy_batch(images: torch.Tensor) -> int:
    per_sample = max(1, images[0].numel()) if len(images) else 1
    return max(1, min(ACCURACY_BATCH, ACCURACY_BATCH_VALUES // per_sample))


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from .environment import cpu_model

    return f"cpu: {cpu_model()}"


class _Lru(OrderedDict):
    """Keep only the most recent entries: models and decoded datasets are large."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        while len(self) >= self.size:
            self.popitem(last=False)
            gc.collect()
        value = self[key] = make()
        return value


class Workbench:
    def __init__(self, settings: Settings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.cache = ArtifactCache(settings.cache_dir)
        self.log = log
        self.models = _Lru(1)  # name -> (BuiltModel, fingerprint)
        self.datasets = _Lru(2)  # (dataset, preprocess) -> (dataset, images, labels)
        self.references: dict[tuple, torch.Tensor] = {}  # eager logits, for agreement and relative accuracy
        self.reference_top1: dict[tuple, float] = {}
        self.references_from_disk: set[tuple] = set()
        self.accuracy: dict[tuple, Any] = {}  # one accuracy pass per prepared artifact, shared by batch sizes
        # Thread counts chosen by probing, per (model, backend, batch size, precision): a cell that
        # runs again in this session (another test, a repeat) measures the same configuration.
        self.chosen_threads: dict[tuple, int] = {}

    def model(self, spec: CellSpec) -> tuple[BuiltModel, str]:
        def make() -> tuple[BuiltModel, str]:
            entry = registry.models.get(spec.model)
            ctx = ModelContext(
                name=spec.model, weights=self.settings.weights, data_root=self.settings.data_root, cache=self.cache,
                dataset=spec.dataset, input_shape=entry.meta["input_shape"], num_classes=entry.meta["num_classes"],
                download=self.settings.download, log=self.log,
            )
            built = entry.factory(ctx)
            if not isinstance(built, BuiltModel):  # a bare nn.Module: weights as its factory made them
                built = BuiltModel(built, scale_uint8, "user", "module returned by the factory", "scale-uint8")
            built.module.eval()
            if built.calibrate is not None:
                # Before fingerprinting: caches must be keyed on the calibrated weights.
                _, images, _ = self.dataset(spec, built)
                built.calibrate(images)
                built.module.eval()
            return built, model_fingerprint(built.module)

        # The dataset is part of the key: calibration depends on it.
        return self.models.get_or_make((spec.model, self.settings.weights, spec.dataset), make)

    def dataset(self, spec: CellSpec, built: BuiltModel) -> tuple[Any, torch.Tensor, torch.Tensor]:
        def make() -> tuple[Any, torch.Tensor, torch.Tensor]:
            entry = registry.models.get(spec.model)
            ctx = DatasetContext(spec.dataset, self.settings.data_root, self.cache, entry.meta["input_shape"],
                                 entry.meta["num_classes"], self.settings.download, self.log)
            dataset = registry.datasets.create(spec.dataset, ctx)
            images, labels = dataset.load(built.preprocess)
            return dataset, images.contiguous(), labels

        return self.datasets.get_or_make((spec.dataset, built.preprocess_id or id(built.preprocess)), make)

    def reference(self, spec: CellSpec, device: str, built: BuiltModel, key: str, images: torch.Tensor,
                  labels: torch.Tensor, content_id: str) -> tuple[torch.Tensor, float]:
        """Eager fp32 logits on the cell's device: computed once, cached in memory and on disk."""
        ref_key = (spec.model, key, content_id, device)
        if ref_key not in self.references:
            disk_key = hash_parts("reference", key, content_id, built.preprocess_id, device, torch.__version__)
            path = self.cache.lookup("reference", disk_key, ".pt")
            logits = None
            if path is not None:
                try:
                    logits = torch.load(path, weights_only=True)
                    self.references_from_disk.add(ref_key)
                except Exception as exc:
                    self.cache.discard(path, f"does not load: {exc}")
            if logits is None or logits.shape[0] != len(labels):
                from .backends.eager import EagerBackend

                prepared = EagerBackend().prepare(built.module, self._prepare_ctx(spec, device, key, "fp32"))
                num_classes = registry.models.get(spec.model).meta["num_classes"]  # same shape check as every cell
                logits = evaluate(prepared.run, images, labels, accuracy_batch(images), num_classes).logits
                self.references_from_disk.discard(ref_key)
                self.cache.store("reference", disk_key, ".pt", lambda tmp: torch.save(logits, tmp))
            self.set_reference(ref_key, logits, labels)
        return self.references[ref_key], self.reference_top1[ref_key]

    def set_reference(self, ref_key: tuple, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.references[ref_key] = logits
        self.reference_top1[ref_key] = float((logits.argmax(1) == labels).float().mean())

    def _prepare_ctx(self, spec: CellSpec, device: str, key: str, precision: Optional[str] = None) -> PrepareContext:
        entry = registry.models.get(spec.model)
        return PrepareContext(device=device, precision=precision or spec.precision, batch_size=spec.batch_size,
                              input_shape=entry.meta["input_shape"], cache=self.cache, model_key=key, log=self.log)


def scale_uint8(images: torch.Tensor) -> torch.Tensor:
    """Default preprocessing for bare modules: uint8 pixels to floats in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of a block to ``phases[name]`` (for --cnn-profile)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


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

    def __init__(self, spec: CellSpec, bench: Workbench, request: pytest.FixtureRequest, identity: dict[str, Any]) -> None:
        self.spec = spec
        self.bench = bench
        self.request = request
        self.item = request.node
        self.device = identity["device"] = resolve_device(spec.device)
        self.benchmark: Any = None
        self.result: Optional[dict[str, Any]] = None
        self.reference_top1: Optional[float] = None
        if self.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("--cnn-device=cuda, but no CUDA GPU is available here (torch.cuda.is_available() is False)")
        self.backend = registry.backends.create(spec.backend)
        reason = self.backend.unavailable_reason(self.device, spec.precision)
        if reason:
            pytest.skip(reason)

    def run(self) -> dict[str, Any]:
        """Prepare, evaluate accuracy, time, measure memory; record and return the result dict."""
        if self.result is not None:
            return self.result
        spec, bench = self.spec, self.bench
        result = R.empty_result({**spec.as_dict(), "device": self.device})
        result["device_name"] = device_name(self.device)
        phases: dict[str, float] = result["phases_s"]
        try:
            with _phase(phases, "model"):
                built, key = bench.model(spec)
            with _phase(phases, "dataset"):
                dataset, images, labels = bench.dataset(spec, built)
        except CellSkip as exc:
            pytest.skip(str(exc))
        result.update(weights=built.weights_kind, weights_note=built.weights_note, weights_id=built.weights_id or None)
        result["accuracy_valid"] = built.accuracy_meaningful and bool(dataset.labels_meaningful)

        ref_key = (spec.model, key, dataset.content_id, self.device)
        batch = images[: spec.batch_size]
        if len(batch) < spec.batch_size:  # small datasets: tile samples up to the batch size
            batch = images[torch.arange(spec.batch_size) % len(images)]
        ctx = bench._prepare_ctx(spec, self.device, key)
        ctx.calibration, ctx.calibration_id = images, f"{dataset.content_id}/{built.preprocess_id}"
        threads_before = torch.get_num_threads()
        prepared: Optional[Prepared] = None
        memory = HostMemory()
        device_memory = self._device_memory()
        stats = None
        try:
            with memory, device_memory:
                with _phase(phases, "prepare"):
                    prepared = self._prepare(built.module, ctx, batch, result)
                device_memory.sample()
                result["provider"] = getattr(prepared, "provider", self.spec.backend)
                result["math"] = getattr(prepared, "math", None)
                if getattr(prepared, "artifact_bytes", None) is not None:
                    result["artifact_mb"] = prepared.artifact_bytes / 2**20

                with _phase(phases, "accuracy"):
                    self._accuracy(result, prepared, images, labels, built, key, dataset.content_id, ref_key)
                device_memory.sample()

                # Requested only now, so a cell that skips or fails earlier never touches pytest-benchmark.
                self.benchmark = self.request.getfixturevalue("benchmark")
                s = bench.settings
                rules = TimingRules(s.warmup, s.min_rounds, s.max_rounds, s.max_time, s.target_ci)
                with _phase(phases, "timing"), torch.inference_mode():
                    stats = time_with_benchmark(self.benchmark, prepared.bind(batch), rules)
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
        return result

    def _device_memory(self) -> Any:
        if self.device != "cuda":
            return _NoDeviceMemory()
        from .gpu import DeviceMemory

        return DeviceMemory(torch_allocator=bool(getattr(self.backend, "uses_torch_allocator", False)))

    def _thread_candidates(self) -> list[int]:
        if self.device != "cpu":
            return [torch.get_num_threads()]
        if self.bench.settings.threads is not None:
            return [self.bench.settings.threads]
        if self._thread_key in self.bench.chosen_threads:
            return [self.bench.chosen_threads[self._thread_key]]
        from .environment import physical_cores

        return sorted({physical_cores(), 1}, reverse=True)

    @property
    def _thread_key(self) -> tuple:
        return (self.spec.model, self.spec.backend, self.spec.batch_size, self.spec.precision, self.spec.dataset)

    def _prepare(self, module: torch.nn.Module, ctx: PrepareContext, batch: torch.Tensor, result: dict[str, Any]) -> Prepared:
        """Prepare the model; on the CPU with --cnn-threads=auto, once per thread count, keeping the
        faster after a short probe (one thread wins for small models and on a busy machine, where
        threads waiting on each other cost milliseconds)."""
        candidates = self._thread_candidates()
        options: dict[int, tuple[Prepared, float]] = {}
        probes: dict[int, float] = {}
        try:
            for threads in candidates:
                torch.set_num_threads(threads)
                ctx.threads = threads
                started = time.perf_counter()
                options[threads] = (self.backend.prepare(module, ctx), time.perf_counter() - started)
                if len(candidates) > 1:
                    with torch.inference_mode():
                        probes[threads] = probe(options[threads][0].bind(batch))
        except BaseException:
            for unused, _ in options.values():
                unused.close()
            raise
        threads = fastest(probes) if probes else candidates[0]
        if self.device == "cpu" and self.bench.settings.threads is None:
            self.bench.chosen_threads[self._thread_key] = threads
        prepared = options[threads][0]
        # The first preparation is the one that built (or loaded) the artifact: report its cost.
        first, prepare_s = options[candidates[0]]
        for other, (unused, _) in options.items():
            if other != threads:
                unused.close()
        torch.set_num_threads(threads)
        probes_ms = {str(n): seconds * 1000.0 for n, seconds in probes.items()}
        result.update(threads=threads, thread_probe_ms=probes_ms or None, prepare_s=prepare_s,
                      prepare_cached=bool(getattr(first, "cache_hit", False)))
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

    def _accuracy(self, result: dict[str, Any], prepared: Prepared, images: torch.Tensor, labels: torch.Tensor,
                  built: BuiltModel, key: str, content_id: str, ref_key: tuple) -> None:
        spec, bench = self.spec, self.bench
        acc_key = (spec.model, key, content_id, spec.backend, self.device, spec.precision)
        acc = bench.accuracy.get(acc_key)
        if acc is None:
            if spec.backend == "eager" and spec.precision == "fp32":
                # Eager fp32 is the reference itself, which is kept on disk: a warm run does not
                # repeat this pass (``reference_cached`` in the result says so).
                logits, _ = bench.reference(spec, self.device, built, key, images, labels, content_id)
                acc = accuracy_from_logits(logits, labels)
            else:
                num_classes = registry.models.get(spec.model).meta["num_classes"]
                batch_size = min(accuracy_batch(images), getattr(prepared, "max_batch", None) or ACCURACY_BATCH)
                acc = evaluate(prepared.run, images, labels, batch_size, num_classes)
            bench.accuracy[acc_key] = acc
        result.update(samples=acc.samples, top1=acc.top1, top5=acc.top5)
        reference, self.reference_top1 = bench.reference(spec, self.device, built, key, images, labels, content_id)
        result["reference_cached"] = ref_key in bench.references_from_disk
        agree: Agreement = agreement(acc.logits, reference)
        result["agreement"] = agree.as_dict()
        result["reference_top1"] = self.reference_top1

    def note(self, text: str) -> None:
        """Add a finding to this cell's row (shown beside its status, kept in the result files)."""
        self.run()["notes"].append(text)

    def check_accuracy(self, min_top1: Optional[float] = None, min_top5: Optional[float] = None,
                       min_relative_to_eager: Optional[float] = None, rule: str = "") -> None:
        """Assert accuracy thresholds (fractions); skip with the reason when accuracy is not meaningful.

        ``rule`` says where ``min_top1`` comes from, for the failure message.
        """
        result = self.run()
        if not result["accuracy_valid"]:
            why = "synthetic data has no real labels" if result["weights"] != "random" else (
                f"random weights, so accuracy means nothing: {result.get('weights_note') or 'random'}")
            pytest.skip(f"accuracy not asserted: {why}")
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
