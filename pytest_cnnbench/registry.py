"""Name -> factory registries for models, datasets and backends.

Registration stores a factory and light metadata only, so the registries can be
filled and validated (option checking, ``--help``) without importing torch.
Adding an entry is one decorated function, from this package or a conftest.py::

    from pytest_cnnbench import register_model

    @register_model("tinynet", dataset="synthetic", input_shape=(3, 32, 32), num_classes=10)
    def tinynet(ctx):
        import torch.nn as nn
        return nn.Sequential(...)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no registry entry answers to; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    meta: dict[str, Any]


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T], **meta: Any) -> Callable[..., T]:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' and '_'")
        self._entries[name] = Entry(name, factory, dict(meta))
        return factory

    def decorator(self, name: str | None = None, **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            return self.register(name or factory.__name__, factory, **meta)

        return wrap

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)


models: Registry[Any] = Registry("model")
datasets: Registry[Any] = Registry("dataset")
backends: Registry[Any] = Registry("backend")


def register_model(
    name: str | None = None,
    *,
    dataset: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    **meta: Any,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Register a model factory ``factory(ctx: ModelContext) -> nn.Module | BuiltModel``.

    ``dataset`` names the dataset the model is evaluated on by default,
    ``input_shape`` is one sample's (C, H, W).
    """
    return models.decorator(name, dataset=dataset, input_shape=tuple(input_shape), num_classes=num_classes, **meta)


def register_dataset(name: str | None = None, **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Register a dataset factory ``factory(ctx: DatasetContext) -> ImageDataset``."""
    return datasets.decorator(name, **meta)


def register_backend(name: str | None = None, **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Register a backend class/factory ``factory() -> Backend``."""
    return backends.decorator(name, **meta)


def load_builtins() -> None:
    """Import the built-in registrations (cheap: none of them imports torch at import time)."""
    from . import backends as _b  # noqa: F401
    from . import datasets as _d  # noqa: F401
    from . import models as _m  # noqa: F401
