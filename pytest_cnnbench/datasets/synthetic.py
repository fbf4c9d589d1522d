"""Random uint8 images of a model's input shape: latency and memory without any data on disk."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..cache import hash_parts


class SyntheticDataset:
    name = "synthetic"
    labels_meaningful = False

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, size: int = 256, seed: int = 0) -> None:
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.size = size
        self.seed = seed
        self.content_id = hash_parts("synthetic", repr(self.input_shape), str(num_classes), str(size), str(seed))

    def __len__(self) -> int:
        return self.size

    def calibration_source(self, preprocess: Callable[[Any], torch.Tensor], count: int) -> tuple[torch.Tensor, str, str]:
        """int8 calibration images: random images of another seed than the evaluated ones."""
        seed = self.seed + 1
        raw = torch.randint(0, 256, (count, *self.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        return preprocess(raw), hash_parts(self.content_id, "calibration", str(count), str(seed)), \
            f"{count} synthetic images (seed {seed}, not the evaluated ones)"

    def load(self, preprocess: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        raw = torch.randint(0, 256, (self.size, *self.input_shape), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, self.num_classes, (self.size,), generator=generator)
        return preprocess(raw), labels
