"""Built-in datasets: the factories that ``registry.BUILTINS`` names. Heavy modules are imported inside each.

Their names differ from the submodules', which would shadow them once imported."""

from __future__ import annotations

from ..core import DatasetContext


def imagenet_preprocess():
    """For a bare module on ImageNet images: torchvision's standard resize 256, crop 224, normalize."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    transform = ImageClassification(crop_size=224, resize_size=256, interpolation=InterpolationMode.BILINEAR)
    return transform, "torchvision " + " ".join(repr(transform).split())


def mnist_test_set(ctx: DatasetContext):
    from .mnist import MnistDataset

    return MnistDataset.from_context(ctx, split="test")


def synthetic_images(ctx: DatasetContext):
    from .synthetic import SyntheticDataset

    return SyntheticDataset(ctx.input_shape, ctx.num_classes)


def imagenet_folder(ctx: DatasetContext):
    from .imagefolder import ImageFolderDataset

    return ImageFolderDataset.from_context(ctx)
