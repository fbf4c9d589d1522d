"""Step 1, the inputs: the cell's dataset, preprocessed for its model, and the batch it is timed on."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from .. import results as R
from ..core import CellSkip
from .context import CellContext, phase


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The evaluated images and labels, the timed ``batch`` (tiled from them where the dataset is
    smaller than the batch size), and the ``dataset`` they came from (``content_id`` keys the caches)."""

    dataset: Any
    images: torch.Tensor
    labels: torch.Tensor
    batch: torch.Tensor

    @property
    def content_id(self) -> str:
        return self.dataset.content_id


def tile(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` images; small datasets are tiled up to the batch size."""
    batch = images[:batch_size]
    if len(batch) < batch_size:
        batch = images[torch.arange(batch_size) % len(images)]
    return batch


def load_inputs(cell: CellContext, result: R.CellResult) -> Inputs:
    """Load the dataset (a skip where it cannot be had) and note in the row where weights and images came from."""
    built = cell.model.built
    try:
        with phase(result.phases_s, "dataset"), cell.lock.shared():
            dataset, images, labels = cell.bench.dataset(cell.spec, built, cell.model.info)
    except CellSkip as exc:
        pytest.skip(str(exc))
    result.set(weights=built.weights_kind, weights_note=built.weights_note, weights_id=built.weights_id or None,
               dataset_images=getattr(dataset, "total_images", None), evaluation=getattr(dataset, "evaluation_note", None))
    result.accuracy_valid = built.accuracy_meaningful and bool(dataset.labels_meaningful)
    return Inputs(dataset, images, labels, tile(images, cell.spec.batch_size))
