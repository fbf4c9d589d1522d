"""Sleeping or spinning pauses between timed blocks? Side by side, in one process.

Times LeNet (random weights, exported to ONNX, ONNX Runtime on 1 thread, batch 1) in blocks
of 15 calls after pauses of 75-225 ms, alternating rounds whose pauses sleep with rounds whose
pauses spin (``timing.spin``), and prints each block's median in microseconds. On the 2-vCPU
KVM guest the plugin was built on, 5-17 of 20 blocks ran 1.5-2x slow after sleeping pauses,
against 1-5 of 20 after spinning ones (7 rounds): a vCPU woken from idle lands wherever the host puts it.

    .venv/bin/python scripts/pause_experiment.py --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pytest_cnnbench.timing import spin
from pytest_cnnbench.models.lenet import LeNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--calls", type=int, default=15, help="timed calls per block")
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lenet.onnx"
        with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is deprecated
            warnings.simplefilter("ignore")
            torch.onnx.export(LeNet().eval(), (torch.zeros(1, 1, 28, 28),), str(path), input_names=["x"], dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)}
    for _ in range(200):
        session.run(None, feed)
    rng = random.Random(0)
    pauses = {"sleep": time.sleep, "spin": spin}
    for round_ in range(args.rounds):
        for kind, pause in pauses.items():
            medians = []
            for _ in range(args.blocks):
                pause(0.15 * rng.uniform(0.5, 1.5))
                for _ in range(90):  # re-warm, as the timed loop does after a pause
                    session.run(None, feed)
                times = []
                for _ in range(args.calls):
                    started = time.perf_counter()
                    session.run(None, feed)
                    times.append(time.perf_counter() - started)
                medians.append(statistics.median(times) * 1e6)
            fast = min(medians)
            slow = sum(m > 1.3 * fast for m in medians)
            print(f"round {round_ + 1} {kind:5}: {slow:2} of {len(medians)} blocks over 1.3x the fastest; block medians (us) "
                  + " ".join(f"{m:.0f}" for m in medians), flush=True)


if __name__ == "__main__":
    main()
