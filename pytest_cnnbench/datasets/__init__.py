"""Built-in datasets. Factories import their heavy modules lazily."""

from __future__ import annotations

from ..core import DatasetContext
from ..registry import register_dataset


def imagenet_preprocess():
    """For a bare module on ImageNet images: torchvision's standard resize 256, crop 224, normalize."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    transform = ImageClassification(crop_size=224, resize_size=256, interpolation=InterpolationMode.BILINEAR)
    return transform, "torchvision " + " ".join(repr(transform).split())


@register_dataset("mnist", input_shape=(1, 28, 28), num_classes=10, description="MNIST test set (10,000 digits), from IDX files or a torchvision download")
def mnist(ctx: DatasetContext):
    from .mnist import MnistDataset

    return MnistDataset.from_context(ctx, split="test")


@register_dataset("synthetic", description="random images of the model's input shape; for latency only")
def synthetic(ctx: DatasetContext):
    from .synthetic import SyntheticDataset

    return SyntheticDataset(ctx.input_shape, ctx.num_classes)


@register_dataset("imagenet", input_shape=(3, 224, 224), num_classes=1000, bare_preprocess=imagenet_preprocess,
                  description="ImageNet-style folder under --cnn-data-root: WordNet-id class subfolders, "
                                          "or images + labels.csv (e.g. imagenet-sample/)")
def imagenet(ctx: DatasetContext):
    from .imagefolder import ImageFolderDataset

    return ImageFolderDataset.from_context(ctx)
