"""EfficientNet-Lite0 (real ImageNet weights), ResNet50, AlexNet and GoogLeNet on ImageNet-style images: accuracy, agreement with eager, latency, memory.

Top-1 floors: on the full ILSVRC-2012 validation set, 99% of torchvision's published top-1
of the pretrained weights; on any other dataset, ``cnn_min_top1`` (ini or --cnn-min-top1)
or else MIN_TOP1 below. Random weights (pretrained ones not to be had) skip the accuracy
assertion with the reason; agreement, latency and memory are still measured and asserted.
"""

import pytest

from pytest_cnnbench.thresholds import top1_floor

pytestmark = pytest.mark.cnnbench(models=["efficientnet_lite0", "resnet50", "alexnet", "googlenet"])

# Floors on datasets other than the full validation set: half the published top-1. A sample
# or a user's own photos can legitimately score some points off the published figure (1000
# images alone carry about +-1.3 points of sampling error), so these catch what is broken
# (preprocessing, class order, weights), not small regressions. Tighten them per dataset here
# or with cnn_min_top1.
MIN_TOP1 = {"resnet50": 0.40, "alexnet": 0.28, "googlenet": 0.35, "efficientnet_lite0": 0.85}
# efficientnet_lite0 runs with its real weights here, so its floor is set from this sample instead
# (docs/models.md): eager fp32 scores 88.3% top-1 on the 1000 images (binomial standard error 1.0 point),
# and 77.9% with ImageNet's mean/std instead of the weights' 0.5/0.5. 0.85 sits about 3 standard errors
# below the first and 7 points above the second: a wrong preprocessing fails, sampling noise does not.

# Agreement with eager PyTorch fp32 on the same images: (max relative logit error, min top-1 agreement),
# by (device, precision). CPU fp32, measured here with calibrated random weights: rel_err 2e-6..9e-6
# on the 1000-image sample (ResNet50 on ONNX Runtime the largest) and 1.3e-4 on synthetic noise
# images (their calibrated logits vary little between images, so rounding weighs more); top-1
# agreement 100%. 1e-3 clears both with room to spare yet fails a wrong or lower-precision op
# (bf16 ~4e-3, fp16 ~1e-3 and up, a wrong op ~1); 0.999 tolerates one near-tie flip per 1000
# images. Not measured here (no GPU): CUDA fp32, where PyTorch runs convolutions in TF32 by
# default, and fp16/int8 on CUDA, set from the formats' precision. CPU int8: per model, below.
AGREEMENT = {
    ("cpu", "fp32"): (1e-3, 0.999),
    ("cuda", "fp32"): (5e-3, 0.99),
    ("cpu", "fp16"): (2e-2, 0.98),
    ("cuda", "fp16"): (2e-2, 0.98),
    ("cuda", "int8"): (1e-1, 0.90),
    ("cuda", "bf16"): (1e-1, 0.95),  # not measured here (no GPU): set from bf16's 8-bit mantissa
}
# CPU int8 (ONNX Runtime QDQ and OpenVINO/NNCF, 64 calibration images, minmax), measured here on the
# 1000-image sample with calibrated random weights (no pretrained weights reachable):
#   resnet50:  top-1 agreement 8.7% (ort) / 11.0% (openvino), rel_err 0.54 / 0.97
#   googlenet: 33.3% / 33.9%, rel_err 0.30 / 0.57
#   alexnet:   85.9% / 82.9%, rel_err 0.19 / 0.18
# Low, and low for a reason that is the random weights', not the quantizer's: a randomly initialised
# network whose BatchNorm is recalibrated amplifies any perturbation layer after layer (per-layer
# SQNR of the int8 ResNet50 falls from 32 dB after the stem to under 2 dB at the logits; fp32
# rounding alone comes out as 9e-6, i.e. ~100x eps), and the standardized head spreads the classes
# over thin margins. AlexNet, with no BatchNorm, keeps 83-86%. Trained weights keep far more
# (LeNet trained: 99.97%). The floors are about half the lower measured agreement and twice the
# larger error: they still fail a broken quantization (wrong scales or channel order: agreement near
# chance, 0.1-1%); with real weights the binding check is the accuracy rule in test_imagenet_model
# (int8 top-1 at least 99% of fp32's, MLPerf's rule).
# efficientnet_lite0, with its real weights, keeps far more (936 images, 64 held-apart calibration images):
# 98.6% / 97.4% (ort / openvino), rel_err 0.10 / 0.30; its floors sit a few points under and at twice the error.
CPU_INT8_AGREEMENT = {"resnet50": (2.0, 0.04), "googlenet": (1.2, 0.15), "alexnet": (0.4, 0.6),
                      "efficientnet_lite0": (0.6, 0.95)}
# CPU bf16 (the whole model cast) against eager fp32, measured here by scripts/bf16_agreement.py on 96
# images of the sample: efficientnet_lite0 (its real weights) top-1 agreement 99.0%, rel_err 0.024;
# resnet50 (calibrated random weights) 26%, rel_err 0.13, for the reason int8's is low (above). Through
# the suite on 936 images, efficientnet_lite0: eager 99.0% e3e-02, inductor 99.1% e3e-02, openvino
# 99.1% e6e-02. The floors are about half the agreement (efficientnet_lite0: 3 points under it) and
# twice the larger error (resnet50: nearly four times, as openvino's bf16 error ran twice eager's on
# efficientnet_lite0); a model measured neither way gets int8's loose default, which still fails
# chance-level output.
CPU_BF16_AGREEMENT = {"efficientnet_lite0": (0.12, 0.96), "resnet50": (0.5, 0.12)}


# What a row other than eager fp32 may cost in top-1, in points, judged by the 95% interval of the paired
# difference on the same images (docs/accuracy.md): 1 point, about MLPerf's int8 rule (99% of fp32's top-1)
# at these models' top-1. On the 1000-image sample a row that flips a few percent of the images has a
# half-width near one point, so a small real cost reads "inconclusive" (passes, said in the row; fails
# with --cnn-strict) rather than "within". Not asserted where the weights are random (nothing to judge).
MAX_TOP1_DROP_PP = 1.0


def agreement_limits(device: str, precision: str, model: str) -> tuple[float, float]:
    if (device, precision) == ("cpu", "int8"):
        return CPU_INT8_AGREEMENT.get(model, (2.0, 0.04))
    if (device, precision) == ("cpu", "bf16"):
        return CPU_BF16_AGREEMENT.get(model, (2.0, 0.04))
    return AGREEMENT[device, precision]


def test_imagenet_model(cnnbench):
    result = cnnbench.run()
    max_rel_err, min_agree = agreement_limits(cnnbench.device, cnnbench.spec.precision, cnnbench.spec.model)
    cnnbench.check_agreement(max_rel_err=max_rel_err, min_top1_agree=min_agree)
    cnnbench.check_precision_cost(max_top1_drop_pp=MAX_TOP1_DROP_PP)
    user_floors = dict(cnnbench.bench.settings.min_top1)
    floor = top1_floor(cnnbench.spec.model, result, user=user_floors, suite=MIN_TOP1)
    # min_relative_to_eager=0.99: every row's top-1 at least 99% of eager fp32's on the same images,
    # which for int8 is MLPerf's rule; asserted where accuracy means something (trained weights).
    cnnbench.check_accuracy(min_top1=floor.value, min_relative_to_eager=0.99, rule=floor.rule)
