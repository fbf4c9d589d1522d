"""Any ImageNet classifier of torchvision's or timm's zoo, by name: ``torchvision:<name>``, ``timm:<name>``.

Names are checked (and shell-style wildcards expanded) at configure time, before anything is
built: a bad name is a ``ZooNameError`` listing close matches. Only then are torchvision or
timm imported (never when this module is imported: the plugin imports it).

- torchvision: any name of ``torchvision.models.list_models(module=torchvision.models)``;
  preprocessing is the default weights' ``transforms()``, provenance their ``meta``, and the
  published top-1 ``meta["_metrics"]["ImageNet-1K"]["acc@1"]``. Built by the same code as
  the built-in resnet50/alexnet/googlenet (``torchvision_models.build_torchvision_model``).
- timm: any name of ``timm.list_models()`` (or a tagged one of ``timm.list_models(pretrained=True)``,
  e.g. ``resnet18.a1_in1k``) whose pretrained config predicts the 1000 ImageNet-1k classes;
  preprocessing from ``resolve_data_config``/``create_transform`` of that config. timm's
  package ships no results tables (1.0.31 has none), so there is no published floor and the
  row's weights note says so; if a later package ships ``results/results-imagenet.csv``, its
  top-1 is used.

Weights follow ``--cnn-weights`` as for the built-ins: pretrained where they can be had
(else random, BatchNorm-calibrated, with a note saying why), ``random``, or a state dict file.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import fnmatch
import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..registry import UnknownModelError

if TYPE_CHECKING:  # pragma: no cover
    from ..core import BuiltModel, ModelContext

ZOOS = ("torchvision", "timm")
INSTALL = {"timm": "pip install 'pytest-cnnbench[timm]'"}
NUM_CLASSES = 1000  # ImageNet-1k: the dataset these models are evaluated on
DATASET = "imagenet"
TIMM_RESULTS = "results-imagenet.csv"


class ZooNameError(UnknownModelError):
    """A zoo name that does not name a model (the message lists close matches), or a zoo that is not installed."""


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """What the harness needs of a zoo model before building it (the registry's ``Entry`` shape)."""

    name: str  # e.g. "torchvision:mobilenet_v3_small"
    factory: Callable[["ModelContext"], "BuiltModel"]
    meta: dict[str, Any]


def is_zoo_name(name: object) -> bool:
    return isinstance(name, str) and ":" in name


def split(name: str) -> tuple[str, str]:
    zoo, _, arch = name.partition(":")
    return zoo.strip(), arch.strip()


# -- names ------------------------------------------------------------------------------
def _require(zoo: str) -> Any:
    if importlib.util.find_spec(zoo) is None:
        raise ZooNameError(f"{zoo}: names need {zoo}, which is not installed; install it with: {INSTALL[zoo]}")
    return importlib.import_module(zoo)


@functools.lru_cache(maxsize=None)
def names(zoo: str) -> tuple[str, ...]:
    """Every model name the zoo answers to (wildcards match these)."""
    if zoo == "torchvision":
        _require("torchvision")
        models = importlib.import_module("torchvision.models")
        return tuple(models.list_models(module=models))
    if zoo == "timm":
        return tuple(_require("timm").list_models())
    raise ZooNameError(f"unknown model zoo {zoo!r}; valid: {', '.join(f'{z}:<name>' for z in ZOOS)}")


@functools.lru_cache(maxsize=None)
def _timm_tagged() -> frozenset[str]:
    return frozenset(_require("timm").list_models(pretrained=True))


def _close(word: str, choices: tuple[str, ...], zoo: str) -> str:
    close = difflib.get_close_matches(word, choices, n=6, cutoff=0.6)
    if close:
        return "close matches: " + ", ".join(f"{zoo}:{c}" for c in close)
    lister = "torchvision.models.list_models(module=torchvision.models)" if zoo == "torchvision" else "timm.list_models()"
    return f"no close match; the names are {lister}"


def _timm_classes(arch: str) -> Optional[int]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return None if cfg is None else cfg.num_classes


def expand(item: str) -> list[str]:
    """``"torchvision:mobilenet*"`` -> the full names it stands for; ZooNameError for a bad one."""
    zoo, pattern = split(item)
    if zoo not in ZOOS:
        raise ZooNameError(f"{item!r}: unknown model zoo {zoo!r}; valid: {', '.join(f'{z}:<name>' for z in ZOOS)}")
    if not pattern:
        raise ZooNameError(f"{item!r}: no model name after '{zoo}:' (e.g. {zoo}:resnet18)")
    available = names(zoo)
    if any(c in pattern for c in "*?["):
        matched = fnmatch.filter(available, pattern)
        if zoo == "timm":  # only ImageNet-1k classifiers: the dataset has those 1000 classes
            matched = [m for m in matched if _timm_classes(m) in (None, NUM_CLASSES)]
        if not matched:
            raise ZooNameError(f"{item!r} matches no {zoo} ImageNet-1k classifier; "
                               f"{_close(pattern.replace('*', '').replace('?', ''), available, zoo)}")
        return [f"{zoo}:{m}" for m in matched]
    if pattern not in available and not (zoo == "timm" and pattern in _timm_tagged()):
        raise ZooNameError(f"{item!r} is not a {zoo} classification model; {_close(pattern, available, zoo)}")
    if zoo == "timm":
        classes = _timm_classes(pattern)
        if classes not in (None, NUM_CLASSES):
            raise ZooNameError(f"{item!r} is not an ImageNet-1k classifier: its pretrained config predicts {classes} "
                               f"classes, the imagenet dataset has {NUM_CLASSES}; pick an *_in1k tag "
                               f"(timm.list_models('{pattern.split('.')[0]}*', pretrained=True))")
    return [f"{zoo}:{pattern}"]


def check_one(name: str) -> None:
    """A ZooNameError unless ``name`` is one model of a zoo (not a wildcard)."""
    if any(c in split(name)[1] for c in "*?["):
        raise ZooNameError(f"{name!r}: a wildcard, not one model")
    expand(name)  # a ZooNameError (close matches) for a bad name


# -- entries ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def entry(name: str) -> ZooEntry:
    """The zoo model's metadata (no model is built): dataset, input shape, classes, preprocessing summary."""
    check_one(name)
    zoo, arch = split(name)
    if zoo == "torchvision":
        from .torchvision_models import default_weights

        weights = default_weights(arch)
        crop = weights.transforms().crop_size[0]
        meta = dict(dataset=DATASET, input_shape=(3, crop, crop), num_classes=len(weights.meta["categories"]),
                    description=f"{arch} from torchvision (default weights: {weights})", zoo=zoo, arch=arch)
        return ZooEntry(name, functools.partial(build_torchvision, arch=arch), meta)
    cfg = _timm_cfg(arch)
    meta = dict(dataset=DATASET, input_shape=tuple(_timm_data_config(arch)["input_size"]),
                num_classes=cfg.num_classes if cfg is not None else NUM_CLASSES,
                description=f"{arch} from timm (pretrained config: {_timm_weights_id(arch)})", zoo=zoo, arch=arch)
    return ZooEntry(name, functools.partial(build_timm, arch=arch), meta)


# -- published top-1 --------------------------------------------------------------------
def published_top1(weights_id: Optional[str]) -> Optional[float]:
    """The library's published ImageNet-1k top-1 (a fraction) of these weights, or None when it publishes none."""
    if not weights_id:
        return None
    if weights_id.startswith("timm/"):
        return timm_published_top1(weights_id[len("timm/"):])
    try:
        from torchvision.models import get_weight

        weights = get_weight(weights_id)
    except Exception:  # not a torchvision weights name
        return None
    acc = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return None if acc is None else float(acc) / 100.0


def timm_results_table(folder: Optional[Path] = None) -> Optional[Path]:
    """timm's ImageNet results table if the installed package ships one (1.0.31 does not)."""
    if folder is None:
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.origin is None:
            return None
        folder = Path(spec.origin).parent / "results"
    path = folder / TIMM_RESULTS
    return path if path.is_file() else None


def timm_published_top1(model: str, table: Optional[Path] = None) -> Optional[float]:
    """Top-1 of ``model`` (tagged, e.g. resnet18.a1_in1k) in timm's results table (columns model, top1 in %)."""
    table = table or timm_results_table()
    if table is None:
        return None
    with open(table, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("model") == model and row.get("top1"):
                return float(row["top1"]) / 100.0
    return None


def _published_note(weights_id: str, library: str) -> str:
    top1 = published_top1(weights_id)
    if top1 is None:
        if library == "timm":
            return (f"no published top-1 for {weights_id}: the installed timm ships no results table "
                    f"({TIMM_RESULTS}), so no published floor")
        return f"no published top-1 in {weights_id}'s meta, so no published floor"
    return f"published top-1 {100 * top1:.3f}% ({library}'s metadata for {weights_id})"


# -- torchvision --------------------------------------------------------------------------
def build_torchvision(ctx: "ModelContext", arch: str) -> "BuiltModel":
    from .torchvision_models import build_torchvision_model, default_weights

    built = build_torchvision_model(ctx, arch)
    built.weights_note = f"{built.weights_note}; {_published_note(str(default_weights(arch)), 'torchvision')}"
    return built


# -- timm ---------------------------------------------------------------------------------
def _timm_cfg(arch: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch)


def _timm_weights_id(arch: str) -> str:
    cfg = _timm_cfg(arch)
    if cfg is None:
        return f"timm/{arch}"
    if cfg.hf_hub_id:
        return cfg.hf_hub_id
    return f"timm/{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm/{cfg.architecture}"


def _timm_data_config(arch: str) -> dict[str, Any]:
    from timm.data import resolve_data_config

    cfg = _timm_cfg(arch)
    return resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})


def _timm_preprocess(arch: str) -> tuple[Any, str]:
    from timm.data import create_transform

    config = _timm_data_config(arch)
    transform = create_transform(**config)
    return transform, "timm " + " ".join(repr(transform).split()) + f" {sorted(config.items())}"


def _timm_module(arch: str, pretrained: bool = False) -> Any:
    import timm

    return timm.create_model(arch, pretrained=pretrained, num_classes=NUM_CLASSES)


def _reachable(url: str, timeout: float = 5.0) -> Optional[str]:
    """None when ``url``'s host accepts a connection, else why not (a quick probe: timm's hub client
    otherwise retries an unreachable host for about a minute per file)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname or url
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return f"{host} unreachable ({type(exc).__name__}: {exc})"
    return None


def _timm_cached(cfg: Any) -> tuple[bool, str]:
    """Whether timm's pretrained weights are in the local caches, and where they were looked for."""
    import os
    from urllib.parse import urlparse

    import torch

    places = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")):
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str):
                return True, ""
        places.append(f"{cfg.hf_hub_id} in the Hugging Face cache {HF_HUB_CACHE}")
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)  # as timm keeps it
        if path.is_file():
            return True, ""
        places.append(f"{path} (torch.hub's cache, {Path(torch.hub.get_dir())})")
    return False, "looked for " + " and ".join(places or ["no download source in the pretrained config"])


def load_timm_pretrained(arch: str, weights_id: str, download: bool, log: Any) -> tuple[Optional[Any], str]:
    """``(module, note)`` with timm's pretrained weights, or ``(None, why not)``."""
    from .torchvision_models import DOWNLOAD_TIMEOUT_S, _socket_timeout

    cfg = _timm_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None, f"timm publishes no pretrained weights for {arch}"
    cached, where = _timm_cached(cfg)
    if not cached and not download:
        return None, f"pretrained {weights_id} could not be had (not in the cache, downloads disabled); {where}"
    if not cached:
        unreachable = _reachable("https://huggingface.co" if cfg.hf_hub_id else cfg.url)
        if unreachable:
            return None, f"pretrained {weights_id} could not be had (download failed: {unreachable}); {where}"
        log(f"cnnbench: timm:{arch}: downloading {weights_id}")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            module = _timm_module(arch, pretrained=True)
    except Exception as exc:  # network and file errors come in many types
        what = "the cached file does not load" if cached else "download failed"
        return None, f"pretrained {weights_id} could not be had ({what}: {type(exc).__name__}: {exc}); {where}"
    return module, f"timm {weights_id}"


def _timm_random(arch: str) -> Any:
    import torch

    from .torchvision_models import RANDOM_SEED

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _timm_module(arch)


def build_timm(ctx: "ModelContext", arch: str) -> "BuiltModel":
    from ..core import BuiltModel
    from .torchvision_models import load_state_dict_into, random_built

    if ctx.num_classes != NUM_CLASSES:
        raise ValueError(f"{ctx.name}: {ctx.num_classes} classes asked for, timm:{arch} is built with {NUM_CLASSES}")
    preprocess, pid = _timm_preprocess(arch)
    weights_id = _timm_weights_id(arch)
    published = _published_note(weights_id, "timm")
    if ctx.weights == "random":
        return random_built(_timm_random(arch), preprocess, pid, f"--cnn-weights=random; {published}")
    if ctx.weights != "pretrained":
        path = Path(ctx.weights).expanduser()
        module = load_state_dict_into(_timm_module(arch), ctx.name, path)
        return BuiltModel(module.eval(), preprocess, "file", f"state dict {path} (preprocessing of {weights_id})", pid)
    module, note = load_timm_pretrained(arch, weights_id, ctx.download, ctx.log)
    if module is None:
        ctx.log(f"cnnbench: {ctx.name}: {note}; running with random weights (accuracy not asserted)")
        return random_built(_timm_random(arch), preprocess, pid, f"{note}; {published}")
    return BuiltModel(module.eval(), preprocess, "pretrained", f"{note}; {published}", pid, weights_id=weights_id)
