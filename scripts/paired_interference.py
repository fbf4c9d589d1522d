"""Does timing two backends side by side change what either takes? ONNX Runtime's spinning threads, measured.

Eager PyTorch and ONNX Runtime each run on their own thread pool. Timed alternately (as a paired
speedup is), a pool that keeps spinning after its call returns takes the cores from the next call.
For each ONNX Runtime configuration, this prints eager's and ONNX Runtime's medians alone (each back
to back) and alternating single calls, and the paired ratio against the ratio of the medians alone:

    python scripts/paired_interference.py --model alexnet --repeats 2

"plugin" is the session the ort backend makes (``OrtBackend.session_options``: its threads stop
spinning when a run returns); "default" is ONNX Runtime's default (they spin on). Torch's own
pool, shared by eager and TorchScript, has no such effect between those two.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="alexnet", help="a torchvision model name (random weights)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    import torchvision

    from pytest_cnnbench.backends.ort import OrtBackend

    torch.set_num_threads(args.threads)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    batch = torch.randn(1, 3, 224, 224)
    onnx = io.BytesIO()
    torch.onnx.export(model, batch, onnx, dynamo=False, input_names=["input"], output_names=["logits"])
    array = batch.numpy()

    def session(kind: str):
        options = OrtBackend().session_options(ort, args.threads)
        if kind == "default":  # the same options, less the one entry this script is about
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
        made = ort.InferenceSession(onnx.getvalue(), options, providers=["CPUExecutionProvider"])
        return lambda: made.run(["logits"], {"input": array})

    def eager() -> None:
        with torch.inference_mode():
            model(batch)

    def timed(call) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    def ms(values) -> float:
        return statistics.median(values) * 1000

    for _ in range(args.repeats):
        for kind in ("default", "plugin"):
            other = session(kind)
            for _ in range(5):
                other(), eager()
            eager_alone = [timed(eager) for _ in range(args.calls)]
            other_alone = [timed(other) for _ in range(args.calls)]
            eager_beside, other_beside = [], []
            for _ in range(args.calls):
                eager_beside.append(timed(eager))
                other_beside.append(timed(other))
            paired = statistics.median(e / o for e, o in zip(eager_beside, other_beside))
            print(f"{args.model}, ONNX Runtime {kind:7}: alone eager {ms(eager_alone):6.2f} ms, ort {ms(other_alone):6.2f} ms "
                  f"(ratio {ms(eager_alone) / ms(other_alone):.3f}) | alternating eager {ms(eager_beside):6.2f} ms, "
                  f"ort {ms(other_beside):6.2f} ms, paired ratio {paired:.3f}", flush=True)


if __name__ == "__main__":
    main()
