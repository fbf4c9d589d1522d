"""Built-in models. Each registration is one decorated function; torch is imported inside it."""

from __future__ import annotations

from ..core import ModelContext
from ..registry import register_model


@register_model("lenet", dataset="mnist", input_shape=(1, 28, 28), num_classes=10,
                description="LeNet (3x3 convs), trained on MNIST on first use and cached")
def lenet(ctx: ModelContext):
    from .lenet import build_lenet

    return build_lenet(ctx)
