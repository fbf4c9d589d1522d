"""Which real images an int8 cell calibrates on.

Calibration images are kept apart from the evaluation images where the dataset allows it:
a dataset that offers ``calibration_source(preprocess, count)`` (MNIST: its training split;
synthetic: images from another seed) gives them; any other dataset (an ImageNet-style folder
has no separate split) lends a seeded pick of its evaluation images, and the note says so.
Every result row of an int8 cell carries that note (``result["calibration"]``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from . import progress
from .cache import hash_parts

SEED = 0


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    images: torch.Tensor  # preprocessed, as the model takes them
    id: str  # changes with the images (data, split, pick, preprocessing): for cache keys
    note: str  # for the result row, e.g. "64 MNIST training images"
    held_out: bool  # not among the evaluated images


def pick(available: int, count: int, seed: int = SEED) -> torch.Tensor:
    """A fixed, seeded choice of ``count`` indices out of ``available`` (spread over the whole set, so
    over the classes too, rather than the first few files)."""
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count]


def calibration_set(dataset: Any, preprocess: Callable[[Any], torch.Tensor], preprocess_id: str,
                    eval_images: torch.Tensor, count: int) -> CalibrationSet:
    """Up to ``count`` calibration images for ``dataset``, preprocessed like its evaluation images."""
    progress.update(f"choosing up to {count} calibration images")
    source = getattr(dataset, "calibration_source", None)
    found = source(preprocess, count) if callable(source) else None
    if found is not None:
        images, content_id, note = found
        return CalibrationSet(images.contiguous(), hash_parts("calibration", content_id, preprocess_id), note, True)
    chosen = pick(len(eval_images), count)
    name = getattr(dataset, "name", "this dataset")
    note = (f"{len(chosen)} of the {len(eval_images)} evaluation images ({name} has no separate calibration split, "
            "so the calibration images are among those evaluated)")
    key = hash_parts("calibration", getattr(dataset, "content_id", ""), preprocess_id, "evaluation", str(len(chosen)), str(SEED))
    return CalibrationSet(eval_images[chosen].contiguous(), key, note, False)
