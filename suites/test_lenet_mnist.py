"""LeNet on the real MNIST test set: accuracy is asserted, latency and memory recorded."""

import pytest

pytestmark = pytest.mark.cnnbench(models=["lenet"])


def test_lenet_mnist(cnnbench):
    result = cnnbench.run()
    assert result["samples"] == 10000 or result["dataset"] != "mnist"
    cnnbench.check_accuracy(min_top1=0.98, min_relative_to_eager=0.99)
    cnnbench.check_agreement(max_rel_err=1e-3, min_top1_agree=0.999)
