"""ImageNet classifiers from torchvision (ResNet50, AlexNet, GoogLeNet, and any other of its
classification models through ``torchvision:<name>``, see zoo.py), built by one code path.

Weights (``--cnn-weights``):

- ``pretrained``: the model's default torchvision weights (``get_model_weights(arch).DEFAULT``),
  loaded through torchvision's weights API, which reads and fills torch.hub's cache
  (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``). With
  ``--cnn-no-download`` only that cache is consulted. When the weights cannot be had
  (not cached and no download, a failed download, a cached file that does not load),
  the model still runs with random weights so latency, memory and agreement are
  measured; its ``weights_note`` says why and which file was looked for.
- ``random``: torchvision's initialisation under a fixed seed.
- a path: a state dict for the same architecture (``weights_kind="file"``).

Preprocessing is always the default weights' ``transforms()`` (resize, centre crop,
normalize), so ResNet50 V2 gets its 232/224 recipe and AlexNet/GoogLeNet 256/224.

A randomly initialised ResNet50 or GoogLeNet in eval mode predicts one class for every
image (BatchNorm's initial statistics do not match the activations, and the logits share
a large image-independent part), which would make top-1 agreement between backends
trivially 100%. Random models therefore carry a ``calibrate`` hook that re-estimates
BatchNorm statistics and standardizes each class's logit on a fixed pick of the
evaluation images (both folded into the weights: the architecture is unchanged).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn

from .. import progress
from ..core import BuiltModel, ModelContext

RANDOM_SEED = 0
CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 32
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation: a black-holed network must not hang the session

# Constructor options for the inference layout the pretrained weights run in (torchvision
# sets the same ones when it loads them): GoogLeNet without its training-only auxiliary
# heads (eval outputs stay a plain tensor, which tracing and ONNX export need) and with
# transform_input, which maps ImageNet normalization to the one the weights were trained on.
# Inception v3 likewise (its aux head is AuxLogits).
ARCH_OPTIONS: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False, "transform_input": True},
                                           "inception_v3": {"aux_logits": False, "transform_input": True}}
# Passed only when building with random weights (explicit, which also silences GoogLeNet's FutureWarning).
RANDOM_INIT_OPTIONS: dict[str, dict[str, Any]] = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}
# The Linear layer that produces the logits (other models: found by classifier_head).
CLASSIFIER_HEADS = {"resnet50": "fc", "alexnet": "classifier.6", "googlenet": "fc"}
# State-dict keys of training-only parts that the inference layout does not have.
TRAINING_ONLY_PREFIXES: dict[str, tuple[str, ...]] = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def default_weights(arch: str) -> Any:
    from torchvision.models import get_model_weights

    return get_model_weights(arch).DEFAULT


def preprocess_id(transform: Any) -> str:
    """A stable id for a torchvision preset: its repr (crop, resize, mean, std, interpolation) plus antialias."""
    text = " ".join(repr(transform).split())
    return f"torchvision {text} antialias={getattr(transform, 'antialias', None)}"


def checkpoint_path(weights: Any) -> Path:
    """Where torchvision's weights API keeps (or would download) this checkpoint: torch.hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_pretrained(arch: str, weights: Any, download: bool, log: Any) -> tuple[Optional[nn.Module], str]:
    """``(module, note)`` with torchvision's pretrained weights, or ``(None, why not)``."""
    from torchvision.models import get_model

    path = checkpoint_path(weights)
    cached = path.is_file()
    where = f"looked for {path} (torch.hub's cache, $TORCH_HOME/hub/checkpoints)"
    if not cached and not download:
        return None, f"pretrained {weights} could not be had (not in the cache, downloads disabled); {where}"
    if not cached:
        log(f"cnnbench: {arch}: downloading {weights} to {path}")
    progress.update(f"{'downloading' if not cached else 'loading'} pretrained {weights}")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            module = get_model(arch, weights=weights, **_pretrained_options(arch))
    except Exception as exc:  # network and file errors come in many types
        what = "the cached file does not load" if cached else "download failed"
        return None, f"pretrained {weights} could not be had ({what}: {type(exc).__name__}: {exc}); {where}"
    return module, f"torchvision {weights} from {path}"


def _pretrained_options(arch: str) -> dict[str, Any]:
    # torchvision builds GoogLeNet with aux heads to load the checkpoint, then drops them
    # unless aux_logits=True was asked for; transform_input defaults to True with weights.
    return {k: v for k, v in ARCH_OPTIONS.get(arch, {}).items() if k != "aux_logits"}


def random_module(arch: str) -> nn.Module:
    from torchvision.models import get_model

    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG
        torch.manual_seed(RANDOM_SEED)
        return get_model(arch, weights=None, **ARCH_OPTIONS.get(arch, {}), **RANDOM_INIT_OPTIONS.get(arch, {}))


def load_state_dict_file(arch: str, path: Path) -> nn.Module:
    """The architecture with a user's state dict; any mismatch is an error naming the file."""
    from torchvision.models import get_model

    options = {**ARCH_OPTIONS.get(arch, {}), **({"init_weights": False} if arch in RANDOM_INIT_OPTIONS else {})}
    return load_state_dict_into(get_model(arch, weights=None, **options), arch, path,
                                dropped=TRAINING_ONLY_PREFIXES.get(arch, ()))


def load_state_dict_into(module: nn.Module, name: str, path: Path, dropped: tuple[str, ...] = ()) -> nn.Module:
    """``module`` with the state dict in ``path`` (keys starting with ``dropped`` ignored); any mismatch
    is an error naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's own message runs to a page
        raise ValueError(f"--cnn-weights {path}: not a loadable state dict ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--cnn-weights {path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith(dropped)} if dropped else state
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ValueError(f"--cnn-weights {path} does not fit {name}: {first[0].strip()}; "
                         f"select the matching model with --cnn-model") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise ValueError(f"--cnn-weights {path} does not fit {name}: {'; '.join(problems)}; "
                         f"select the matching model with --cnn-model")
    return module


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def calibration_pick(count_available: int, count: int = CALIBRATION_IMAGES, seed: int = RANDOM_SEED) -> torch.Tensor:
    """A fixed, seeded choice of calibration images (spread over the classes, not the first few)."""
    return torch.randperm(count_available, generator=torch.Generator().manual_seed(seed))[:count]


def calibrate_batchnorm(module: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics from ``batches``.

    Only the BatchNorm layers switch to training mode (dropout and GoogLeNet's aux heads
    stay in eval); momentum=None makes the statistics a plain average over the batches.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    module.eval()
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with torch.no_grad():
            for done, batch in enumerate(batches):
                progress.update("calibrating BatchNorm statistics (random weights)", done, len(batches), "batches")
                module(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()


def classifier_head(module: nn.Module, arch: Optional[str] = None) -> Optional[nn.Linear]:
    """The Linear layer that produces the logits: the known one for the built-ins, timm's
    ``get_classifier()``, else the last Linear layer of the module (None if there is none, e.g.
    SqueezeNet's 1x1-convolution classifier)."""
    if arch in CLASSIFIER_HEADS:
        return module.get_submodule(CLASSIFIER_HEADS[arch])
    getter = getattr(module, "get_classifier", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def standardize_logits(head: nn.Linear, module: nn.Module, batches: list[torch.Tensor]) -> None:
    """Fold a per-class standardization of the logits (over ``batches``) into the classifier ``head``.

    Random weights give every image nearly the same logits plus a small image-specific
    part; the shared part makes one class win everywhere. After this, each class's logit
    has mean 0 and standard deviation 1 over the calibration images, so the image-specific
    part decides. The head stays an ordinary Linear layer: the architecture is unchanged.
    """
    progress.update("standardizing the logits (random weights)", detail=f"{len(batches)} batches")
    with torch.no_grad():
        logits = torch.cat([module(batch) for batch in batches])
        if len(logits) < 2:  # nothing varies yet: centring would leave only rounding noise
            return
        mean, std = logits.mean(0), logits.std(0)
        # A class whose logit hardly varies must not be blown up (it would amplify rounding noise).
        std = std.clamp_min(max(1e-12, 1e-3 * float(std.max())))
        head.weight /= std[:, None]
        head.bias.copy_((head.bias - mean) / std)


def calibrate_random_model(module: nn.Module, head: Optional[nn.Linear], images: torch.Tensor) -> None:
    """Make a randomly initialised classifier's predictions vary across ``images``."""
    if len(images) == 0:
        return
    pick = calibration_pick(len(images))
    batches = [images[pick[i:i + CALIBRATION_BATCH]] for i in range(0, len(pick), CALIBRATION_BATCH)]
    # One thread: a fixed summation order, so the calibrated weights (and every cache key
    # derived from them) do not depend on the thread count this session happens to run with.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if has_batchnorm(module):
            calibrate_batchnorm(module, batches)
        if head is not None:
            standardize_logits(head, module, batches)
    finally:
        torch.set_num_threads(threads)
    module.eval()


def random_built(module: nn.Module, preprocess: Any, pid: str, why: str, arch: Optional[str] = None) -> BuiltModel:
    """A randomly initialised classifier whose ``calibrate`` hook makes its predictions vary (see above)."""
    head = classifier_head(module, arch)
    what = [w for w, on in (("BatchNorm statistics", has_batchnorm(module)), ("logit scale", head is not None)) if on]
    note = (f"{why}; random initialisation (seed {RANDOM_SEED}), {' and '.join(what) or 'nothing'} calibrated "
            f"on up to {CALIBRATION_IMAGES} evaluation images")
    return BuiltModel(module.eval(), preprocess, "random", note, pid,
                      calibrate=functools.partial(calibrate_random_model, module, head))


def build_torchvision_model(ctx: ModelContext, arch: str) -> BuiltModel:
    weights = default_weights(arch)
    classes = len(weights.meta["categories"])
    if ctx.num_classes != classes:
        raise ValueError(f"{ctx.name}: registered with {ctx.num_classes} classes but {weights} has {classes}")
    preprocess = weights.transforms()
    pid = preprocess_id(preprocess)

    if ctx.weights == "random":
        return random_built(random_module(arch), preprocess, pid, "--cnn-weights=random", arch)
    if ctx.weights != "pretrained":
        path = Path(ctx.weights).expanduser()
        module = load_state_dict_file(arch, path)
        return BuiltModel(module.eval(), preprocess, "file", f"state dict {path} (preprocessing of {weights})", pid)

    module, note = load_pretrained(arch, weights, ctx.download, ctx.log)
    if module is None:
        ctx.log(f"cnnbench: {ctx.name}: {note}; running with random weights (accuracy not asserted)")
        return random_built(random_module(arch), preprocess, pid, note, arch)
    return BuiltModel(module.eval(), preprocess, "pretrained", note, pid, weights_id=str(weights))
