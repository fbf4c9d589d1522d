"""bf16 against fp32 on the same images: top-1 agreement and the largest relative logit error, per model.

Measures what the suite's bf16 agreement floors (suites/test_imagenet_models.py) are set from: eager
fp32 against the whole model cast to bf16, on real images of the ImageNet sample. ResNet50 runs with
random weights calibrated as the plugin calibrates them (no pretrained weights reachable here).

    CNNBENCH_DATA_ROOT=../shared/data python scripts/bf16_agreement.py [images]
"""

import os
import sys
from pathlib import Path

import torch

from pytest_cnnbench.accuracy import agreement
from pytest_cnnbench.cache import ArtifactCache
from pytest_cnnbench.core import ModelContext
from pytest_cnnbench.datasets.imagefolder import ImageFolderDataset
from pytest_cnnbench.models import resnet50
from pytest_cnnbench.models.efficientnet_lite import build_efficientnet_lite0

count = int(sys.argv[1]) if len(sys.argv) > 1 else 96
folder = Path(os.environ["CNNBENCH_DATA_ROOT"]) / "imagenet-sample"
dataset = ImageFolderDataset(folder)
pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))[:count].tolist()
dataset.files = [dataset.files[i] for i in pick]
cache = ArtifactCache(Path("/tmp/bf16-agreement-cache"), print)
for name, build in (("efficientnet_lite0", build_efficientnet_lite0), ("resnet50", resnet50)):
    built = build(ModelContext(name, "pretrained", None, cache, "imagenet", (3, 224, 224), 1000, download=False, log=lambda m: None))
    images, _ = dataset.load(built.preprocess)
    if built.calibrate is not None:
        built.calibrate(images)
    model = built.module.eval()
    with torch.inference_mode():
        fp32 = torch.cat([model(images[i:i + 16]) for i in range(0, len(images), 16)])
        bf16_model = model.to(torch.bfloat16)
        bf16 = torch.cat([bf16_model(images[i:i + 16].bfloat16()).float() for i in range(0, len(images), 16)])
    a = agreement(bf16, fp32)
    print(f"{name} ({built.weights_kind} weights, {len(images)} images): top-1 agreement {a.top1_agree:.3f}, "
          f"max relative logit error {a.rel_err:.3g}")
