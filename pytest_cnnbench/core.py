"""Plain data types shared by models, datasets, backends and the session.

Nothing here imports torch; tensors appear only in annotations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .cache import ArtifactCache

PRECISIONS = ("fp32", "fp16", "int8", "bf16")
DEVICES = ("cpu", "cuda", "auto")


def cnnbench_marker(node: Any) -> dict[str, Any]:
    """The keyword arguments of a node's ``cnnbench`` markers, the closest one winning."""
    merged: dict[str, Any] = {}
    for mark in reversed(list(node.iter_markers("cnnbench"))):
        merged.update(mark.kwargs)
    return merged


class CellSkip(Exception):
    """Raised by a model, dataset or backend when a cell cannot run here; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One cell of the comparison table: what runs, before anything is built."""

    model: str
    backend: str
    batch_size: int
    dataset: str
    device: str  # as requested: cpu, cuda or auto
    precision: str = "fp32"
    # Set when the model comes from a user's ``cnn_model`` fixture rather than the registry:
    # where that fixture is defined, for messages. ``model`` is then its param id ("" if none).
    model_fixture: Optional[str] = None
    # Under a thread sweep (--cnn-threads=1,2,4): this row's CPU thread count. None: one row, its
    # count the option's or the probe's (recorded in the result's ``threads``).
    threads_requested: Optional[int] = None

    @property
    def id(self) -> str:
        # A fixture's model adds its own param id to the test id: not repeated here.
        parts = [] if self.model_fixture else [self.model]
        parts += [self.backend, f"bs{self.batch_size}"]
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.threads_requested is not None:
            parts.append(f"t{self.threads_requested}")
        return "-".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelContext:
    """What a model factory gets: where data and caches live, which weights were asked for."""

    name: str
    weights: str  # "pretrained", "random", or a path to a state dict
    data_root: Optional[Path]
    cache: "ArtifactCache"
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    download: bool = True
    log: Callable[[str], None] = print


@dataclasses.dataclass
class BuiltModel:
    """A model ready for evaluation, with how its inputs are prepared and where its weights came from.

    ``weights_kind`` is one of "trained", "pretrained", "file", "user" (a bare module from a
    user's factory) or "random"; accuracy of "random" weights is never reported as meaningful.
    """

    module: "torch.nn.Module"
    preprocess: Callable[[Any], "torch.Tensor"]
    weights_kind: str
    weights_note: str = ""
    preprocess_id: str = ""  # identifies ``preprocess`` in cache keys (e.g. the transform's repr)
    weights_id: str = ""  # which published weights, e.g. "ResNet50_Weights.IMAGENET1K_V2"; "" when none
    # Optional ``calibrate(images)``: adapts the module to the evaluation images before any
    # measurement (e.g. BatchNorm statistics of random weights). The ProcessCache calls it once,
    # before fingerprinting the module, so caches are keyed on the calibrated weights.
    calibrate: Optional[Callable[["torch.Tensor"], None]] = None
    # For models from a user's ``cnn_model`` fixture (registered models take these from the
    # registry): the row's name, one sample's (C, H, W), the number of classes. Left out, the
    # name is the fixture's param id, the shape the dataset's and the classes the output's.
    name: Optional[str] = None
    input_shape: Optional[tuple[int, ...]] = None
    num_classes: Optional[int] = None

    @property
    def accuracy_meaningful(self) -> bool:
        return self.weights_kind != "random"


@dataclasses.dataclass
class DatasetContext:
    name: str
    data_root: Optional[Path]
    cache: "ArtifactCache"
    input_shape: tuple[int, ...]
    num_classes: int
    download: bool = True
    log: Callable[[str], None] = print
    skip_bad_images: bool = False  # leave out images that are missing or do not decode (counted, warned)


class ImageDataset(Protocol):
    """A labelled evaluation set.

    ``load(preprocess)`` returns ``(images, labels)``: a float tensor [N, C, H, W] and an
    int64 tensor [N]. ``content_id`` changes when the data changes (used in cache keys);
    ``labels_meaningful`` is False for synthetic data.
    """

    name: str
    num_classes: int
    content_id: str
    labels_meaningful: bool

    def __len__(self) -> int: ...

    def load(self, preprocess: Callable[[Any], "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]: ...
