"""MNIST from the four standard IDX files (gzipped or not).

Looks in ``<root>``, ``<root>/mnist`` and torchvision's ``<root>/MNIST/raw``; when
the files are absent and downloads are allowed, torchvision fetches them.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..cache import hash_parts, sha256_file
from ..core import DatasetContext
from .errors import DatasetError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8}


def candidate_dirs(root: Path) -> list[Path]:
    return [root, root / "mnist", root / "MNIST" / "raw"]


def find_file(root: Path, stem: str) -> Optional[Path]:
    for folder in candidate_dirs(root):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse an IDX file; any truncation or corruption is a DatasetError naming the file."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim != expected_ndim:
        raise DatasetError(f"{path}: bad IDX header (type 0x{dtype_code:02x}, {ndim} dims; expected unsigned bytes, {expected_ndim} dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DatasetError(f"{path}: holds {len(raw) - header} data bytes but its header promises {count} ({'x'.join(map(str, dims))}); the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def locate(root: Optional[Path], split: str, download: bool, fallback_root: Path, log: Callable[[str], None]) -> tuple[Path, Path]:
    stems = FILES[split]
    roots = [r for r in dict.fromkeys((root, fallback_root)) if r is not None]  # each folder once
    for base in roots:
        found = [find_file(base, stem) for stem in stems]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    searched = ", ".join(str(d) for base in roots for d in candidate_dirs(base))
    if not download:
        raise DatasetError(f"MNIST {split} files {' and '.join(s + '.gz' for s in stems)} not found (looked in {searched}); downloads are disabled")
    target = root if root is not None else fallback_root
    log(f"cnnbench: MNIST not found under {target}; downloading it with torchvision")
    try:
        from torchvision.datasets import MNIST

        MNIST(str(target), train=(split == "train"), download=True)
    except Exception as exc:  # network errors come in many types
        raise DatasetError(f"MNIST {split} files not found (looked in {searched}) and the download failed: {exc}") from None
    found = [find_file(target, stem) for stem in stems]
    if not all(found):
        raise DatasetError(f"MNIST download into {target} did not produce {', '.join(stems)}")
    return found[0], found[1]  # type: ignore[return-value]


class MnistDataset:
    name = "mnist"
    num_classes = 10
    labels_meaningful = True

    def __init__(self, images_path: Path, labels_path: Path) -> None:
        self.images_path = images_path
        self.labels_path = labels_path
        images = read_idx(images_path, 3)
        labels = read_idx(labels_path, 1)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels")
        if labels.size and labels.max() >= self.num_classes:
            raise DatasetError(f"{labels_path}: label {int(labels.max())} is out of range 0..9")
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # N, 1, 28, 28 uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.content_id = hash_parts("mnist", sha256_file(images_path), sha256_file(labels_path))

    @classmethod
    def from_context(cls, ctx: DatasetContext, split: str) -> "MnistDataset":
        images, labels = locate(ctx.data_root, split, ctx.download, ctx.cache.root / "data", ctx.log)
        dataset = cls(images, labels)
        dataset.context, dataset.split = ctx, split
        return dataset

    context: Optional[DatasetContext] = None
    split: str = ""

    def calibration_source(self, preprocess: Callable[[Any], torch.Tensor], count: int) -> Optional[tuple[torch.Tensor, str, str]]:
        """int8 calibration images held apart from the test set: a seeded pick of training images."""
        if self.split != "test" or self.context is None:
            return None
        from ..calibration import pick

        train = MnistDataset.from_context(self.context, "train")
        chosen = pick(len(train), count)
        return preprocess(train.images[chosen]), hash_parts(train.content_id, "train", str(len(chosen))), \
            f"{len(chosen)} MNIST training images"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, preprocess: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return preprocess(self.images), self.labels
