"""Built-in datasets. Factories import their heavy modules lazily."""

from __future__ import annotations

from ..core import DatasetContext
from ..registry import register_dataset


@register_dataset("mnist", description="MNIST test set (10,000 digits), from IDX files or a torchvision download")
def mnist(ctx: DatasetContext):
    from .mnist import MnistDataset

    return MnistDataset.from_context(ctx, split="test")


@register_dataset("synthetic", description="random images of the model's input shape; for latency only")
def synthetic(ctx: DatasetContext):
    from .synthetic import SyntheticDataset

    return SyntheticDataset(ctx.input_shape, ctx.num_classes)


@register_dataset("imagenet", description="ImageNet-style folder under --cnn-data-root: WordNet-id class subfolders, "
                                          "or images + labels.csv (e.g. imagenet-sample/)")
def imagenet(ctx: DatasetContext):
    from .imagefolder import ImageFolderDataset

    return ImageFolderDataset.from_context(ctx)
