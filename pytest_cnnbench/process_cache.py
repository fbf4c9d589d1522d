"""Per-process state of the measuring side: built models, decoded datasets, eager references.

One ``ProcessCache`` per pytest process (kept in ``config.stash``). It builds and caches what
several cells share; running one cell is ``runner.CellRunner``'s job. Imported only when
a cell runs, so torch stays out of collection.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import progress, registry
from .backends.base import PrepareContext, model_fingerprint
from .cache import ArtifactCache, hash_parts
from .core import BuiltModel, CellSpec, DatasetContext, ModelContext
from .accuracy import evaluate
from .datasets.errors import DatasetError
from . import models
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
        index = torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    from .environment import cpu_model

    return f"cpu: {cpu_model()}"


def reference_math(device: str) -> str:
    """What eager fp32 computes on ``device``: on CUDA, whether PyTorch's TF32 flags let convolutions
    and matmuls round to TF32 (the reference's cache key must change with them)."""
    if device != "cuda":
        return "fp32"
    return f"fp32 tf32-conv={torch.backends.cudnn.allow_tf32} tf32-matmul={torch.backends.cuda.matmul.allow_tf32}"


def scale_uint8(images: torch.Tensor) -> torch.Tensor:
    """Default preprocessing for bare modules: uint8 pixels to floats in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def wrap_bare_module(module: torch.nn.Module, weights_note: str, dataset: Optional[str]) -> BuiltModel:
    """A bare module (from a registered factory or a user's ``cnn_model`` fixture) as a ``BuiltModel``:
    the dataset's preprocessing for bare modules where it has one (ImageNet folders hold PIL images:
    the standard resize/crop/normalize), else uint8 pixels scaled to [0, 1]."""
    bare = registry.datasets.get(dataset).meta.get("bare_preprocess") if dataset in registry.datasets else None
    preprocess, preprocess_id = bare() if bare is not None else (scale_uint8, "scale-uint8")
    return BuiltModel(module, preprocess, "user", weights_note, preprocess_id)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the harness needs of a cell's model besides the module: its name and shapes."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


@dataclasses.dataclass
class CellModel:
    """A model ready for a cell: the built model, its content key (for caches) and its shapes."""

    built: BuiltModel
    key: str
    info: ModelInfo


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


def _logits_loader(count: int) -> Callable[[Path], torch.Tensor]:
    """Loads cached logits, refusing (so the cache rebuilds them) any that do not cover ``count`` images."""

    def load(path: Path) -> torch.Tensor:
        logits = torch.load(path, weights_only=True)
        if logits.shape[0] != count:
            raise ValueError(f"it holds logits of {logits.shape[0]} images, not {count}")
        return logits

    return load


class ProcessCache:
    def __init__(self, settings: Settings, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.cache = ArtifactCache(settings.cache_dir, log)
        self.log = log
        self.models = _Lru(1)  # (name, weights, dataset) -> CellModel
        self.datasets = _Lru(2)  # (dataset, preprocess) -> (dataset, images, labels)
        self.calibrations = _Lru(2)  # (dataset, preprocess, count) -> CalibrationSet, for int8 cells
        self.references: dict[tuple, torch.Tensor] = {}  # eager logits, for agreement and relative accuracy
        self.references_from_disk: set[tuple] = set()
        self.dataset_errors: dict[tuple, Exception] = {}  # datasets with bad files, by the key of self.datasets
        # One accuracy pass per prepared artifact, shared by batch sizes: (Accuracy, logits read from disk?).
        self.accuracy: dict[tuple, tuple[Any, Optional[bool]]] = {}
        # Thread counts chosen by probing, per (model, backend, batch size, precision): a cell that
        # runs again in this session (another test, a repeat) measures the same configuration.
        self.chosen_threads: dict[tuple, int] = {}
        self.unclaimed_build_s = 0.0  # model building done in a fixture, before its cell's clock started
        self.pace_loaded = False  # earlier sessions' pace read from the cache (between_sessions.py) for machine.PACE
        self.gpu_index = 0  # the GPU this process times on (each xdist worker its own, see ``claim_gpu``)
        self.gpu_claimed = False

    def claim_gpu(self) -> int:
        """Make this worker's GPU the current device: worker ``gwN`` takes visible GPU N modulo their
        number, so workers time side by side on GPUs of their own."""
        if not self.gpu_claimed:
            import os

            from .gpu import worker_gpu

            self.gpu_index = worker_gpu(os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count())
            torch.cuda.set_device(self.gpu_index)
            self.gpu_claimed = True
        return self.gpu_index

    def take_build_seconds(self) -> float:
        """Model-building time not yet counted in any cell's profile (it ran in a fixture)."""
        seconds, self.unclaimed_build_s = self.unclaimed_build_s, 0.0
        return seconds

    # -- models -----------------------------------------------------------------------
    def registered_model(self, spec: CellSpec) -> CellModel:
        """The registry's model for ``spec`` (built once per process while it is the latest)."""
        entry = models.resolve(spec.model).entry  # the registry's, or torchvision:NAME / timm:NAME
        info = ModelInfo(spec.model, tuple(entry.meta["input_shape"]), int(entry.meta["num_classes"]))

        def make() -> CellModel:
            started = time.perf_counter()
            progress.update(f"building model {spec.model} ({self.settings.weights} weights)")
            ctx = ModelContext(
                name=spec.model, weights=self.settings.weights, data_root=self.settings.data_root, cache=self.cache,
                dataset=spec.dataset, input_shape=info.input_shape, num_classes=info.num_classes,
                download=self.settings.download, log=self.log,
            )
            built = entry.factory(ctx)
            if not isinstance(built, BuiltModel):  # a bare nn.Module: weights as its factory made them
                built = wrap_bare_module(built, "module returned by the factory", spec.dataset)
            model = self._finish(built, spec, info)
            self.unclaimed_build_s += time.perf_counter() - started
            return model

        # The dataset is part of the key: calibration depends on it.
        return self.models.get_or_make((spec.model, self.settings.weights, spec.dataset), make)

    def fixture_model(self, built: BuiltModel, spec: CellSpec, info: ModelInfo) -> CellModel:
        """A model a user's ``cnn_model`` fixture returned (already checked by the runner)."""
        started = time.perf_counter()
        model = self._finish(built, spec, info)
        self.unclaimed_build_s += time.perf_counter() - started
        return model

    def _finish(self, built: BuiltModel, spec: CellSpec, info: ModelInfo) -> CellModel:
        built.module.eval()
        if built.calibrate is not None:
            # Before fingerprinting: caches must be keyed on the calibrated weights.
            dataset, images, _ = self.dataset(spec, built, info)
            calibrate, module = built.calibrate, built.module
            built.calibrate = None  # once: a fixture may hand the same object to several cells
            # The calibration is deterministic (seeded weights, the same images, one thread), so its
            # result is cached like any artifact: keyed on the weights before it and the images.
            key = hash_parts("calibrated", model_fingerprint(module), dataset.content_id, built.preprocess_id or "",
                             torch.__version__)

            def run_calibration() -> dict[str, torch.Tensor]:
                progress.update(f"calibrating model {info.name} on {spec.dataset}")
                calibrate(images)
                return {k: v.detach().clone() for k, v in module.state_dict().items()}

            state, _, hit = self.cache.load_or_build(
                "calibrated", key, ".pt", lambda path: torch.load(path, map_location="cpu", weights_only=True),
                run_calibration, lambda value, tmp: torch.save(value, tmp))
            if hit:
                module.load_state_dict(state)
            built.module.eval()
        return CellModel(built, model_fingerprint(built.module), info)

    # -- data ---------------------------------------------------------------------------
    def dataset(self, spec: CellSpec, built: BuiltModel, info: ModelInfo) -> tuple[Any, torch.Tensor, torch.Tensor]:
        def make() -> tuple[Any, torch.Tensor, torch.Tensor]:
            ctx = DatasetContext(spec.dataset, self.settings.data_root, self.cache, info.input_shape,
                                 info.num_classes, self.settings.download, self.log,
                                 skip_bad_images=self.settings.skip_bad_images)
            progress.update(f"loading and preprocessing dataset {spec.dataset}")
            dataset = registry.datasets.create(spec.dataset, ctx)
            images, labels = dataset.load(built.preprocess)
            return self._hold_apart(dataset, images.contiguous(), labels)

        key = (spec.dataset, info.input_shape, info.num_classes, built.preprocess_id or id(built.preprocess))
        if key in self.dataset_errors:  # bad files: every cell on this data fails alike, without decoding it again
            raise self.dataset_errors[key]
        try:
            return self.datasets.get_or_make(key, make)
        except DatasetError as exc:
            self.dataset_errors[key] = exc
            raise

    def _hold_apart(self, dataset: Any, images: torch.Tensor, labels: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Images held apart for int8 calibration (--cnn-calibration-split), from every row's evaluation alike,
        unless the dataset has a calibration split of its own or --cnn-calibration-dir supplies them."""
        from .calibration import hold_apart, split_count

        s = self.settings
        if s.calibration_dir is not None and hasattr(dataset, "file_hashes"):
            return dataset, images, labels
        try:
            count = split_count(s.calibration_split, len(images), s.calibration_images)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        return hold_apart(dataset, images, labels, count)

    def calibration(self, spec: CellSpec, built: BuiltModel, info: ModelInfo) -> Any:
        """The int8 calibration images for the cell's dataset (see ``calibration.py``), once per process."""
        from .calibration import calibration_set

        dataset, images, _ = self.dataset(spec, built, info)
        count = self.settings.calibration_images
        folder = self.settings.calibration_dir
        key = (spec.dataset, info.input_shape, info.num_classes, built.preprocess_id or id(built.preprocess), count, folder)
        return self.calibrations.get_or_make(
            key, lambda: calibration_set(dataset, built.preprocess, built.preprocess_id, images, count, folder))

    # -- the eager reference --------------------------------------------------------------
    def reference(self, model: CellModel, device: str, images: torch.Tensor, labels: torch.Tensor,
                  content_id: str, spec: CellSpec) -> torch.Tensor:
        """Eager fp32 logits on the cell's device: computed once, cached in memory and on disk.

        Keyed on content only (model weights, data, preprocessing, device, torch), so any path
        that leads to the same data and model finds it."""
        built = model.built
        ref_key = (model.key, content_id, built.preprocess_id, device)
        if ref_key not in self.references:
            disk_key = hash_parts("reference", model.key, content_id, built.preprocess_id, device, torch.__version__,
                                  reference_math(device))

            def build() -> torch.Tensor:
                from .backends.eager import EagerBackend

                progress.update("eager fp32 reference", 0, len(labels), "images")
                prepared = EagerBackend().prepare(built.module, self.prepare_ctx(spec, device, model, "fp32"))
                # Same shape check as every cell.
                return evaluate(prepared.run, images, labels, accuracy_batch(images), model.info.num_classes).logits

            logits, _, from_disk = self.cache.load_or_build("reference", disk_key, ".pt", _logits_loader(len(labels)),
                                                            build, torch.save)
            if from_disk:
                self.references_from_disk.add(ref_key)
            else:
                self.references_from_disk.discard(ref_key)
            self.references[ref_key] = logits
        return self.references[ref_key]

    def backend_logits(self, artifact_id: str, model: CellModel, content_id: str, device: str, count: int,
                       compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """A prepared backend's accuracy logits on a dataset, from the disk cache or ``compute()``d and
        kept: ``(logits, from_disk)``. Keyed like the eager reference, plus what runs (``artifact_id``:
        the artifact and its runtime's version) and the machine (kernels differ between CPUs)."""
        from .between_sessions import machine_identity

        identity = machine_identity()
        disk_key = hash_parts("logits", artifact_id, model.key, content_id, model.built.preprocess_id, device,
                              torch.__version__, *(f"{k}={identity[k]}" for k in sorted(identity)))
        logits, _, from_disk = self.cache.load_or_build("logits", disk_key, ".pt", _logits_loader(count), compute, torch.save)
        return logits, from_disk

    def reference_from_disk(self, model: CellModel, content_id: str, device: str) -> bool:
        return (model.key, content_id, model.built.preprocess_id, device) in self.references_from_disk

    def prepare_ctx(self, spec: CellSpec, device: str, model: CellModel, precision: Optional[str] = None) -> PrepareContext:
        return PrepareContext(device=device, precision=precision or spec.precision, batch_size=spec.batch_size,
                              input_shape=model.info.input_shape, cache=self.cache, model_key=model.key, log=self.log,
                              calibration_method=self.settings.calibration_method,
                              inductor_mode=self.settings.inductor_mode, reprobe=self.settings.reprobe)
