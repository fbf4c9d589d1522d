"""ResNet50's speedups over eager, by hand: each backend alternated call by call with eager, both at the
same thread count, with nothing of the plugin but the settings it reports (TorchScript variant, ORT options).

    python scripts/speedup_by_hand.py --threads 2 --ts-variant frozen+optimized

Prints, per backend, the median of the per-pair ratios (eager call time / backend call time) and the
interquartile range of those ratios. This is the independent check of the table's paired speedups
(issue 24): run it just before or after the plugin's run, on a quiet machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ts-variant", default="frozen", choices=["frozen", "frozen+optimized"])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--backends", default="torchscript,ort")
    args = parser.parse_args()

    import torch
    import torchvision

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    calls = {"eager": lambda: model(x)}
    wanted = args.backends.split(",")
    with torch.no_grad():
        if "torchscript" in wanted:
            frozen = torch.jit.freeze(torch.jit.trace(model, x).eval())
            if args.ts_variant == "frozen+optimized":
                buffer = io.BytesIO()
                torch.jit.save(frozen, buffer)
                buffer.seek(0)
                frozen = torch.jit.optimize_for_inference(torch.jit.load(buffer))
            calls["torchscript"] = lambda: frozen(x)
        if "ort" in wanted:
            import onnxruntime as ort

            path = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False).name
            torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"], dynamo=False)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.force_spinning_stop", "1")
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            feed = {"input": x.numpy()}
            calls["ort"] = lambda: session.run(None, feed)

    def once(call) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    with torch.inference_mode():
        for call in calls.values():  # warm-up
            for _ in range(5):
                call()
        for name in calls:
            if name == "eager":
                continue
            ratios = []
            for i in range(args.pairs):
                # alternate which goes first, so neither always follows the other
                if i % 2:
                    e = once(calls["eager"]); b = once(calls[name])
                else:
                    b = once(calls[name]); e = once(calls["eager"])
                ratios.append(e / b)
            q = statistics.quantiles(ratios, n=4)
            print(f"{args.model} {name} @ {args.threads} thread(s): speedup {statistics.median(ratios):.3f}x "
                  f"(IQR {q[0]:.3f}-{q[2]:.3f}, {len(ratios)} alternated pairs)")


if __name__ == "__main__":
    main()
