"""How far does LeNet int8 stray from fp32, across trainings? The measurement behind the suite's limits.

LeNet is trained on first use, and training on another CPU gives other weights (different SIMD
kernels round differently, and six epochs amplify it): the same seed gave 99.21% top-1 on one
AMD EPYC guest and 99.08% on another. So a limit on int8's agreement with fp32 must hold for any
well-trained LeNet, not for the one weight set it was measured on. This script trains LeNet with
several seeds (a stand-in for that machine-to-machine spread), quantizes each with ONNX Runtime
exactly as the suite does (this CPU's QDQ scheme, the suite's 64 calibration images, minmax) and
prints top-1 and the two agreement figures the suite asserts on all 10,000 test digits. The
last two columns are a control that the limits must fail: the same quantization calibrated on
images that skipped the mean/std normalization (a preprocessing bug: scales set for [0, 1]
inputs, then fed [-0.42, 2.8]).

    .venv/bin/python scripts/int8_agreement_spread.py --data-root ../shared/data --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pytest_cnnbench.backends.ort import INPUT_NAME, export_onnx
from pytest_cnnbench.backends.ort_quant import quantize_onnx, this_cpu_scheme
from pytest_cnnbench.calibration import pick
from pytest_cnnbench.datasets.errors import DatasetError
from pytest_cnnbench.datasets.mnist import MnistDataset, locate
from pytest_cnnbench.accuracy import agreement, evaluate
from pytest_cnnbench.models.lenet import MnistPreprocess, Recipe, initial_model, train

CALIBRATION_IMAGES = 64  # as the suite (--cnn-calibration-images' default)
EVAL_BATCH = 1000


def load(root: Path, split: str) -> MnistDataset:
    try:
        return MnistDataset(*locate(root, split, download=False, fallback_root=root, log=print))
    except DatasetError as exc:
        raise SystemExit(str(exc)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    import onnxruntime as ort

    preprocess = MnistPreprocess()
    train_set, test_set = load(args.data_root, "train"), load(args.data_root, "test")
    x, y = train_set.load(preprocess)
    tx, ty = test_set.load(preprocess)
    chosen = train_set.images[pick(len(train_set), CALIBRATION_IMAGES)]
    calibration = preprocess(chosen).contiguous()
    unnormalized = (chosen.float() / 255.0).contiguous()
    scheme = this_cpu_scheme()
    print(f"int8 scheme: {scheme.describe()}")
    print("seed  top-1 fp32  top-1 int8  top-1 agree  max rel err  99.9th pct rel err  train s  "
          "| control: top-1 agree  max rel err")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for seed in args.seeds:
        model = initial_model(10, seed)
        started = time.perf_counter()
        train(model, x, y, Recipe(seed=seed), log=lambda _: None)
        train_s = time.perf_counter() - started
        with torch.inference_mode():
            fp32_result = evaluate(model, tx, ty, EVAL_BATCH)  # as the suite evaluates every cell
        with tempfile.TemporaryDirectory() as folder:
            fp32 = Path(folder) / "lenet.onnx"
            export_onnx(model, (1, 28, 28), fp32)

            def int8_result(images: torch.Tensor, name: str):
                path = Path(folder) / name
                quantize_onnx(fp32, path, images, "minmax", scheme, INPUT_NAME)
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                return evaluate(lambda batch: torch.from_numpy(session.run(None, {INPUT_NAME: batch.numpy()})[0]),
                                tx, ty, EVAL_BATCH)

            int8 = int8_result(calibration, "int8.onnx")
            control = agreement(int8_result(unnormalized, "control.onnx").logits, fp32_result.logits)
        reference, logits = fp32_result.logits, int8.logits
        agree = agreement(logits, reference)
        errors = (logits - reference).abs().amax(1) / reference.abs().max()
        print(f"{seed:<4}  {fp32_result.top1:10.2%}  {int8.top1:10.2%}  "
              f"{agree.top1_agree:11.2%}  {agree.rel_err:11.3f}  {float(errors.quantile(0.999)):18.3f}  {train_s:7.0f}  "
              f"| {control.top1_agree:20.2%}  {control.rel_err:11.3f}", flush=True)


if __name__ == "__main__":
    main()
