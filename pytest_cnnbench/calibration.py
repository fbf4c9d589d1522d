"""Which real images an int8 cell calibrates on.

Calibration images are kept apart from the evaluation images where the dataset allows it:

- a dataset that offers ``calibration_source(preprocess, count)`` (MNIST: its training split;
  synthetic: images from another seed) gives them;
- ``--cnn-calibration-dir`` names a folder of images for datasets read from image files (an
  ImageNet-style folder); any of them whose bytes are also among the evaluated images is named;
- otherwise ``--cnn-calibration-split`` (default ``auto``) holds a seeded pick of the dataset's
  images apart (``hold_apart``): every row on that dataset, fp32 included, evaluates the rest,
  so all rows compare on the same images; the row's ``evaluation`` says so;
- with the split off (or a dataset too small to split) a seeded pick of the evaluation images is
  lent, and the note says so.

Every result row of an int8 cell carries the note (``result["calibration"]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import progress
from .cache import hash_parts, sha256_file

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


class HeldApart:
    """The evaluated part of a dataset whose seeded pick of ``held`` images is held apart for calibration;
    the rest of the dataset's attributes are its own."""

    def __init__(self, dataset: Any, held_images: torch.Tensor, total: int) -> None:
        self._dataset = dataset
        self._held = held_images
        self.total_images = total
        held = len(held_images)
        self.content_id = hash_parts(dataset.content_id, "calibration split", str(held), str(SEED))
        self.evaluation_note = (f"{total - held} of the {total} images: {held} held apart for int8 calibration "
                                "(seeded split, --cnn-calibration-split)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        return self.total_images - len(self._held)

    def calibration_source(self, preprocess: Any, count: int) -> tuple[torch.Tensor, str, str]:
        images = self._held[:count]
        note = (f"{len(images)} of the {len(self._held)} images held apart from the {len(self)} evaluated "
                f"({getattr(self._dataset, 'name', 'dataset')}, seeded split)")
        return images, hash_parts(self.content_id, "held apart", str(len(images))), note


def split_count(setting: Optional[str], available: int, calibration_images: int) -> int:
    """How many images ``--cnn-calibration-split`` holds apart from ``available``: 'auto' holds
    ``calibration_images`` apart where over twice as many are there (0 otherwise), None holds none,
    a count that many (ValueError when it leaves nothing to evaluate)."""
    if setting is None:
        return 0
    if setting == "auto":
        return calibration_images if available > 2 * calibration_images else 0
    count = int(setting)
    if count >= available:
        raise ValueError(f"--cnn-calibration-split={count} holds apart every one of the dataset's {available} images; "
                         "give fewer")
    return count


def hold_apart(dataset: Any, images: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """``(evaluated part, its images, its labels)`` with a seeded pick of ``count`` images held apart for
    calibration (the same pick for every model: it depends on the number of images alone)."""
    if count <= 0 or callable(getattr(dataset, "calibration_source", None)):
        return dataset, images, labels
    held = pick(len(images), count)
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[held] = False
    return HeldApart(dataset, images[held].contiguous(), len(images)), images[keep].contiguous(), labels[keep]


def image_files(folder: Path) -> list[Path]:
    from .datasets.imagefolder import is_image

    return sorted(p for p in folder.rglob("*") if is_image(p))


def from_folder(folder: Path, dataset: Any, preprocess: Callable[[Any], torch.Tensor], preprocess_id: str,
                count: int) -> CalibrationSet:
    """Up to ``count`` images (a seeded pick) of ``folder``, preprocessed like the evaluation images; any whose
    bytes equal an evaluated image is named in the note."""
    from .datasets.errors import DatasetError
    from .datasets.imagefolder import decode_rgb

    files = image_files(folder)
    if not files:
        raise DatasetError(f"--cnn-calibration-dir {folder}: no images in it")
    chosen = [files[i] for i in sorted(pick(len(files), count).tolist())]
    digests = [sha256_file(path) for path in chosen]
    evaluated = dict(zip(getattr(dataset, "file_hashes", []), getattr(dataset, "files", [])))
    also = [(path, evaluated[d]) for path, d in zip(chosen, digests) if d in evaluated]
    progress.update(f"decoding {len(chosen)} calibration images from {folder}")
    images = torch.stack([preprocess(decode_rgb(path)) for path in chosen])
    note = f"{len(chosen)} images from {folder} (--cnn-calibration-dir)"
    if also:
        named = ", ".join(f"{path.name} (= {other})" for path, other in also[:5])
        more = f" and {len(also) - 5} more" if len(also) > 5 else ""
        note += f"; {len(also)} of them are also evaluated: {named}{more}"
    return CalibrationSet(images.contiguous(), hash_parts("calibration", "folder", *digests, preprocess_id), note,
                          not also)


def calibration_set(dataset: Any, preprocess: Callable[[Any], torch.Tensor], preprocess_id: str,
                    eval_images: torch.Tensor, count: int, folder: Optional[Path] = None) -> CalibrationSet:
    """Up to ``count`` calibration images for ``dataset``, preprocessed like its evaluation images
    (from ``folder`` where given and the dataset is read from image files)."""
    progress.update(f"choosing up to {count} calibration images")
    if folder is not None and hasattr(dataset, "file_hashes"):
        return from_folder(folder, dataset, preprocess, preprocess_id, count)
    source = getattr(dataset, "calibration_source", None)
    found = source(preprocess, count) if callable(source) else None
    if found is not None:
        images, content_id, note = found
        return CalibrationSet(images.contiguous(), hash_parts("calibration", content_id, preprocess_id), note, True)
    chosen = pick(len(eval_images), count)
    name = getattr(dataset, "name", "this dataset")
    note = (f"{len(chosen)} of the {len(eval_images)} evaluation images ({name} has no separate calibration split "
            "and --cnn-calibration-split held none apart, so the calibration images are among those evaluated)")
    key = hash_parts("calibration", getattr(dataset, "content_id", ""), preprocess_id, "evaluation", str(len(chosen)), str(SEED))
    return CalibrationSet(eval_images[chosen].contiguous(), key, note, False)
