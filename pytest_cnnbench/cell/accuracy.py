"""Step 4, accuracy: the backend's pass over the evaluated images (on every core, cached where the
backend names its artifact), its agreement with eager fp32's logits, and its accuracy cost against
them, paired image by image. The one place the row's ``delta_top1_pp`` and ``accuracy_cost`` are made;
the table only reads them."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional

import torch

from .. import progress
from .. import results as R
from ..accuracy import accuracy_from_logits, agreement, evaluate, paired_counts
from ..backends.base import THREADS_AT_PREPARE, THREADS_TORCH, PrepareContext, Prepared, thread_use
from ..process_cache import ACCURACY_BATCH, accuracy_batch
from .context import CellContext, all_cores
from .inputs import Inputs


@dataclasses.dataclass(frozen=True)
class AccuracyFigures:
    """The row's top-1/top-5 and eager fp32's on the same images (fractions), and whether the row's
    logits came from the disk cache (None: not cacheable)."""

    top1: Optional[float]
    top5: Optional[float]
    reference_top1: Optional[float]
    reference_top5: Optional[float]
    from_disk: Optional[bool]


def _points(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``value - reference`` in percentage points (fractions in, points out); None when either is missing."""
    if value is None or reference is None:
        return None
    return round((value - reference) * 100.0, 4)


def _is_reference(cell: CellContext) -> bool:
    return cell.spec.backend == "eager" and cell.spec.precision == "fp32"


def measure_accuracy(cell: CellContext, prepared: Prepared, ctx: PrepareContext, inputs: Inputs,
                     reference: torch.Tensor, result: R.CellResult) -> AccuracyFigures:
    """Accuracy, agreement and accuracy cost against eager fp32 (``reference``, its logits), into the row."""
    bench, labels = cell.bench, inputs.labels
    key = (cell.model.key, inputs.content_id, cell.spec.backend, cell.device, cell.spec.precision)
    if key not in bench.accuracy:
        if _is_reference(cell):
            # Eager fp32 is the reference itself, which is kept on disk: a warm run does not
            # repeat this pass (``reference_cached`` in the result says so).
            bench.accuracy[key] = (accuracy_from_logits(reference, labels),
                                   bench.reference_from_disk(cell.model, inputs.content_id, cell.device))
        else:
            bench.accuracy[key] = _backend_accuracy(cell, prepared, ctx, inputs)
    acc, from_disk = bench.accuracy[key]
    result.set(samples=acc.samples, top1=acc.top1, top5=acc.top5, accuracy_cached=from_disk)
    eager = accuracy_from_logits(reference, labels)
    _warn_if_labels_look_wrong(result, reference, labels)
    result.reference_cached = bench.reference_from_disk(cell.model, inputs.content_id, cell.device)
    result.agreement = agreement(acc.logits, reference).as_dict()
    result.reference_top1, result.reference_top5 = eager.top1, eager.top5
    # The accuracy cost of this row (precision, backend) in points against eager fp32 on the same images.
    result.delta_top1_pp = _points(acc.top1, eager.top1)
    result.delta_top5_pp = _points(acc.top5, eager.top5)
    if not _is_reference(cell):
        result.accuracy_cost = accuracy_cost(acc.logits, reference, labels, cell.settings.accuracy_budget,
                                             bool(result.accuracy_valid))
    return AccuracyFigures(acc.top1, acc.top5, eager.top1, eager.top5, from_disk)


def accuracy_cost(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, budget_pp: float,
                  judged: bool) -> Optional[R.AccuracyCost]:
    """The row against eager fp32 image by image: the paired difference, its interval, its verdict
    against --cnn-accuracy-budget (none where accuracy means nothing)."""
    from ..stats import paired_difference

    top1 = paired_counts(logits, reference, labels, 1)
    if top1 is None or not len(labels):
        return None
    top5 = paired_counts(logits, reference, labels, 5)
    return R.AccuracyCost.from_pairs(paired_difference(*top1), paired_difference(*top5) if top5 else None,
                                     budget_pp, judged)


def _warn_if_labels_look_wrong(result: R.CellResult, reference: torch.Tensor, labels: torch.Tensor) -> None:
    """Trained weights near chance on labelled data: a warning and a note naming the likely cause."""
    from ..accuracy import TRAINED_WEIGHTS, near_chance_warning

    if not result.accuracy_valid or result.weights not in TRAINED_WEIGHTS:
        return
    text = near_chance_warning(reference.argmax(1), labels, reference.shape[1], result.dataset or "")
    if text and text not in result.notes:
        import warnings

        result.notes.append(text)
        warnings.warn(UserWarning(f"cnnbench: {result.model} on {result.dataset}: {text}"))


def _backend_accuracy(cell: CellContext, prepared: Prepared, ctx: PrepareContext, inputs: Inputs) -> tuple[Any, Optional[bool]]:
    """The backend's accuracy pass and whether it came from disk (None: not cacheable). Its logits
    are cached where the backend names what runs (``artifact_id``), so a warm run skips the pass."""
    spec, labels = cell.spec, inputs.labels

    def compute() -> torch.Tensor:
        progress.update(f"accuracy pass ({spec.backend} {spec.precision}, every core)", 0, len(labels), "images")
        return _evaluate_on_all_cores(cell, prepared, ctx, inputs).logits

    artifact_id = getattr(prepared, "artifact_id", None)
    if not artifact_id:
        return accuracy_from_logits(compute(), labels), None
    logits, from_disk = cell.bench.backend_logits(artifact_id, cell.model, inputs.content_id, cell.device,
                                                  len(labels), compute)
    return accuracy_from_logits(logits, labels), from_disk


def _evaluate_on_all_cores(cell: CellContext, prepared: Prepared, ctx: PrepareContext, inputs: Inputs) -> Any:
    """The accuracy pass is not timed, so it runs on every core: torch-threaded backends switch
    their pool for it; those whose thread count is fixed when prepared (ONNX Runtime, OpenVINO)
    get an instance of their own (the artifact comes from the cache)."""
    from ..environment import physical_cores

    cores = physical_cores()
    runner, extra = prepared, None
    use = thread_use(cell.backend)
    if cell.device == "cpu" and use == THREADS_AT_PREPARE and (ctx.threads or cores) < cores:
        extra = cell.backend.prepare(cell.model.built.module, dataclasses.replace(ctx, threads=cores))
        runner = extra
    try:
        batch_size = min(accuracy_batch(inputs.images), getattr(runner, "max_batch", None) or ACCURACY_BATCH)
        with all_cores() if use == THREADS_TORCH else contextlib.nullcontext():
            return evaluate(runner.run, inputs.images, inputs.labels, batch_size, cell.model.info.num_classes)
    finally:
        if extra is not None:
            extra.close()
