"""Built-in models. ``registry.BUILTINS`` names their builders (LeNet's is ``lenet.build_lenet``);
torch is imported inside each, when a cell needs the model."""

from __future__ import annotations

from ..core import ModelContext


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
