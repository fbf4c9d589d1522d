"""Models: the one path from a model name to a model (``resolve``), and the built-in builders.

A name is one of (as timm's ``create_model`` splits its source prefixes):
- a registered name (``lenet``, or a user's ``@register_model``): built by its registry entry;
- ``torchvision:NAME`` or ``timm:NAME``: any ImageNet classifier of that zoo (zoo.py), shell
  wildcards allowed where a list of names is given (``expand``);
- a param id of a user's ``cnn_model`` fixture: built by that fixture (fixture_model.py), so it is
  known only once collection has seen the fixture.

``registry.BUILTINS`` names the built-in builders (LeNet's is ``lenet.build_lenet``); torch is
imported inside each, when a cell needs the model.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Collection, Optional

from .. import registry
from ..core import ModelContext
from ..registry import UnknownModelError
from . import zoo

ZOOS = zoo.ZOOS
ZOO_DATASET = zoo.DATASET  # the dataset every zoo model is evaluated on
REGISTERED = "registry"
FIXTURE = "fixture"
ZOO_NAMES = ", ".join(f"{z}:<name>" for z in ZOOS)
HOW_TO_ADD = ("; add a model with @pytest_cnnbench.register_model(...) or a parametrized cnn_model fixture "
              "(README, \"Adding a model\")")

@dataclasses.dataclass(frozen=True)
class ModelRef:
    """What a model name stands for: its source ("registry", "torchvision", "timm" or "fixture") and,
    except for a fixture's param, the entry that builds it (metadata first, nothing built)."""

    name: str
    source: str

    @property
    def from_zoo(self) -> bool:
        return self.source in ZOOS

    @property
    def entry(self) -> Any:
        """The registry's ``Entry`` or zoo.py's ``ZooEntry`` (``factory``, ``meta``); None for a fixture's param."""
        if self.from_zoo:
            return zoo.entry(self.name)
        if self.source == REGISTERED:
            return registry.models.get(self.name)
        return None

    @property
    def dataset(self) -> Optional[str]:
        """The dataset the model is evaluated on by default (None for a fixture's param: its test says)."""
        entry = self.entry
        return None if entry is None else entry.meta["dataset"]


def source_of(name: str) -> Optional[str]:
    """Where a name would come from, by its spelling alone (nothing is checked): a zoo, the registry,
    or None (not registered: perhaps a param of a user's cnn_model fixture)."""
    if zoo.is_zoo_name(name):
        return zoo.split(name)[0]
    return REGISTERED if name in registry.models else None


def resolve(name: str, fixture_params: Collection[str] = ()) -> ModelRef:
    """The model ``name`` stands for; ``UnknownModelError`` (close matches, how to add one) if none.

    ``fixture_params``: the param ids of users' ``cnn_model`` fixtures, once collection has seen them."""
    source = source_of(name)
    if source is None and name in fixture_params:
        source = FIXTURE
    if source is None:
        raise unknown([name], fixture_params)
    if zoo.is_zoo_name(name):
        zoo.check_one(name)
    return ModelRef(name, source)


def expand(item: str) -> list[str]:
    """The model names one item of ``--cnn-model`` or of a marker's ``models`` stands for: a zoo name's
    matches (wildcards expanded, every one checked), else the item itself if it can be a name at all
    (whether it names a model is ``resolve``'s question: a fixture's params are known only later)."""
    if zoo.is_zoo_name(item):
        return zoo.expand(item)
    if not item.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise UnknownModelError(f"{item!r} is not a model name; valid: all, {', '.join(registry.models.names())}, "
                                f"{ZOO_NAMES}")
    return [item]


def unknown(names: list[str], fixture_params: Collection[str] = (), option: Optional[str] = None) -> UnknownModelError:
    """The one error for names no model answers to: ``unknown model 'x'`` (or ``--OPTION: unknown 'x'``),
    close matches, the valid names and how to add a model."""
    valid = [*(["all"] if option else []), *registry.models.names(), *sorted(p for p in fixture_params if p)]
    close = sorted({c for n in names for c in difflib.get_close_matches(n, valid, n=3, cutoff=0.6)})
    hint = f" (close: {', '.join(close)})" if close else ""
    listed = ", ".join(map(repr, names))
    head = f"--{option}: unknown {listed}{hint}; valid: " if option else f"unknown model {listed}{hint}; valid models: "
    return UnknownModelError(f"{head}{', '.join(valid)}, {ZOO_NAMES}{HOW_TO_ADD}")


# ImageNet classifiers from torchvision: one code path in torchvision_models.py.
def resnet50(ctx: ModelContext):
    from .torchvision_models import build_torchvision_model

    return build_torchvision_model(ctx, "resnet50")


def alexnet(ctx: ModelContext):
    from .torchvision_models import build_torchvision_model

    return build_torchvision_model(ctx, "alexnet")


def googlenet(ctx: ModelContext):
    from .torchvision_models import build_torchvision_model

    return build_torchvision_model(ctx, "googlenet")
