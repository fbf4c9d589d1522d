"""LeNet on the real MNIST test set: accuracy is asserted, latency and memory recorded."""

import pytest

pytestmark = pytest.mark.cnnbench(models=["lenet"])

# Agreement with eager fp32 on the 10,000 test images: (max relative logit error, min top-1 agreement).
# int8 (ONNX Runtime QDQ and OpenVINO/NNCF, 64 training images, minmax) depends on the trained weights,
# and LeNet is trained where it runs (another CPU's kernels round differently). ONNX Runtime int8 over
# eight training seeds (scripts/int8_agreement_spread.py, AMD EPYC without VNNI): rel_err 0.028-0.072,
# top-1 agreement 99.95-100%; on CI's machine, a LeNet at 99.08% top-1: 0.103 (ORT) and 0.104
# (OpenVINO); on an Intel VNNI machine: 0.034 and 0.037. The maximum over 100,000 logits is a tail
# figure, so 0.25 leaves it room; 99.5% leaves agreement room. Both still fail a miscalibrated model
# (calibrated without the mean/std normalization: rel_err 0.69-0.76, agreement 94.3-98.5%, same script).
# On CUDA, not measured here (no GPU): eager fp32 runs convolutions in TF32 by default (10-bit mantissa,
# ~1e-3 relative), so fp32 rows get 5e-3; fp16 rows 2e-2, from fp16's 11-bit mantissa over LeNet's 5 layers.
# bf16 (8-bit mantissa): measured here (Intel Xeon, AMX) at rel_err 6e-3 (eager, the model cast) and 4e-3
# (OpenVINO), top-1 agreement 100% (`pytest suites/ --cnn-model=lenet --cnn-precision=bf16`); 5e-2 leaves
# the tail room on other CPUs' kernels, and still fails a wrong op (~1).
AGREEMENT = {
    ("cpu", "fp32"): (1e-3, 0.999), ("cuda", "fp32"): (5e-3, 0.999), ("cuda", "fp16"): (2e-2, 0.995),
    ("cpu", "int8"): (0.25, 0.995), ("cuda", "int8"): (0.25, 0.995),
    ("cpu", "bf16"): (5e-2, 0.995), ("cuda", "bf16"): (5e-2, 0.995),
}
# What int8 (or another backend) may cost: top-1 within half a point of eager fp32, judged by the 95% interval
# of the paired difference on the 10,000 digits (docs/accuracy.md). Measured: -0.03 to +0.02 pt over the
# eight seeds; the interval's half-width with a handful of flipped digits is about 0.05 pt.
MAX_TOP1_DROP_PP = 0.5


def test_lenet_mnist(cnnbench):
    result = cnnbench.run()
    assert result["samples"] == 10000 or result["dataset"] != "mnist"
    cnnbench.check_accuracy(min_top1=0.98, min_relative_to_eager=0.99)
    cnnbench.check_precision_cost(max_top1_drop_pp=MAX_TOP1_DROP_PP)
    max_rel_err, min_agree = AGREEMENT[cnnbench.device, cnnbench.spec.precision]
    cnnbench.check_agreement(max_rel_err=max_rel_err, min_top1_agree=min_agree)
