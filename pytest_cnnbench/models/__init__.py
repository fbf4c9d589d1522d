"""Built-in models. Each registration is one decorated function; torch is imported inside it."""

from __future__ import annotations

from ..core import ModelContext
from ..registry import register_model


@register_model("lenet", dataset="mnist", input_shape=(1, 28, 28), num_classes=10,
                description="LeNet (3x3 convs), trained on MNIST on first use and cached")
def lenet(ctx: ModelContext):
    from .lenet import build_lenet

    return build_lenet(ctx)


# ImageNet classifiers from torchvision: one code path in torchvision_models.py.
@register_model("resnet50", dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
                description="ResNet50 from torchvision (default weights: IMAGENET1K_V2)")
def resnet50(ctx: ModelContext):
    from .torchvision_models import build_torchvision_model

    return build_torchvision_model(ctx, "resnet50")


@register_model("alexnet", dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
                description="AlexNet from torchvision (default weights: IMAGENET1K_V1)")
def alexnet(ctx: ModelContext):
    from .torchvision_models import build_torchvision_model

    return build_torchvision_model(ctx, "alexnet")


@register_model("googlenet", dataset="imagenet", input_shape=(3, 224, 224), num_classes=1000,
                description="GoogLeNet (Inception v1) from torchvision (default weights: IMAGENET1K_V1)")
def googlenet(ctx: ModelContext):
    from .torchvision_models import build_torchvision_model

    return build_torchvision_model(ctx, "googlenet")
