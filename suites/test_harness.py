"""The harness measured against itself: its overhead, its backends against hand tuning, its repeatability.

Run with ``pytest suites/ --cnn-selfcheck``.

Each comparison is made side by side in one run (the machines are shared and noisy),
and its ratio lands in the table's status column and the result files.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
import warnings
from typing import Any, Callable

import pytest
import torch

# Checks of the harness, not benchmarks: they run with --cnn-selfcheck (and only then).
pytestmark = pytest.mark.cnnbench_selfcheck

OVERHEAD_LIMIT = 0.03  # plugin p50 within 3% of a bare perf_counter loop
HAND_TUNED_LIMIT = 0.05  # backends within 5% of the best hand configuration


def bare_p50(call: Callable[[], Any], warmup: int, rounds: int) -> float:
    """Median of a plain time.perf_counter loop, in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def best_of(candidates: dict[str, Callable[[], Any]], rounds: int) -> tuple[str, float, dict[str, float]]:
    timings = {name: bare_p50(call, warmup=5, rounds=rounds) for name, call in candidates.items()}
    best = min(timings, key=timings.get)
    return best, timings[best], timings


@pytest.mark.cnnbench(models=["lenet"], backends=["eager"], batch_sizes=[1])
def test_overhead_against_bare_loop(cnnbench, cnn_model, cnn_dataset):
    result = cnnbench.run()
    _, images, _ = cnn_dataset
    x, module = images[:1].contiguous(), cnn_model.module
    rounds = result["latency_ms"]["rounds"]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(result["threads"])  # the bare loop runs as the cell did
    try:
        with torch.inference_mode():
            bare = bare_p50(lambda: module(x), warmup=cnnbench.bench.settings.warmup, rounds=max(rounds, 1000))
    finally:
        torch.set_num_threads(threads_before)  # later cells must not inherit it
    ratio = result["latency_ms"]["p50"] / bare
    cnnbench.note(f"p50 {ratio - 1:+.1%} vs bare loop ({bare * 1000:.1f} us)")
    assert abs(ratio - 1) <= OVERHEAD_LIMIT, (
        f"plugin p50 {result['latency_ms']['p50'] * 1000:.1f} us vs bare loop {bare * 1000:.1f} us: {ratio - 1:+.1%}")


def _hand_sessions(onnx_path: str, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """What an expert would try by hand: full graph optimization, sequential execution,
    1 or all physical cores, plain run or I/O bound once."""
    import numpy as np
    import onnxruntime as ort

    from pytest_cnnbench.environment import physical_cores

    candidates: dict[str, Callable[[], Any]] = {}
    array = x.numpy()
    for threads in sorted({1, physical_cores()}):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        candidates[f"run/{threads}t"] = lambda s=session, n=name: s.run(None, {n: array})
        binding = session.io_binding()
        binding.bind_cpu_input(name, array)
        out = ort.OrtValue.ortvalue_from_shape_and_type((1, 1000), np.float32, "cpu")
        binding.bind_ortvalue_output(session.get_outputs()[0].name, out)
        candidates[f"iobinding/{threads}t"] = lambda s=session, b=binding, keep=out: s.run_with_iobinding(b)
    return candidates


@pytest.mark.cnnbench(models=["resnet50"], backends=["ort"], batch_sizes=[1], dataset="synthetic")
def test_ort_as_well_as_by_hand(cnnbench, cnn_model, tmp_path):
    result = cnnbench.run()
    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "resnet50-static.onnx"
    # By hand: a static batch-1 export (the plugin exports one model with a dynamic batch axis).
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cnn_model.module.eval(), (x,), str(path), dynamo=True, external_data=False)
    best, best_ms, timings = best_of(_hand_sessions(str(path), x), rounds=30)
    ratio = result["latency_ms"]["p50"] / best_ms
    cnnbench.note(f"p50 {ratio - 1:+.1%} vs best by hand ({best})")
    assert ratio <= 1 + HAND_TUNED_LIMIT, f"ort p50 {result['latency_ms']['p50']:.2f} ms vs hand-tuned {timings}"


@pytest.mark.cnnbench(models=["resnet50"], backends=["torchscript"], batch_sizes=[1], dataset="synthetic")
def test_torchscript_as_well_as_by_hand(cnnbench, cnn_model):
    result = cnnbench.run()
    from pytest_cnnbench.environment import physical_cores

    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(cnn_model.module.eval(), x)
        frozen = torch.jit.freeze(traced)
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(cnn_model.module.eval(), x)))
    candidates = {}
    threads_before = torch.get_num_threads()
    for threads in sorted({1, physical_cores()}):
        for name, module in (("traced", traced), ("frozen", frozen), ("frozen+optimized", optimized)):
            def call(m=module, t=threads):
                torch.set_num_threads(t)
                return m(x)
            candidates[f"{name}/{threads}t"] = call
    try:
        with torch.inference_mode():
            best, best_ms, timings = best_of(candidates, rounds=30)
    finally:
        torch.set_num_threads(threads_before)
    ratio = result["latency_ms"]["p50"] / best_ms
    cnnbench.note(f"p50 {ratio - 1:+.1%} vs best by hand ({best})")
    assert ratio <= 1 + HAND_TUNED_LIMIT, f"torchscript p50 {result['latency_ms']['p50']:.2f} ms vs hand-tuned {timings}"


FIRST_RUN: dict[str, dict] = {}


@pytest.mark.parametrize("repeat", [1, 2])
@pytest.mark.cnnbench(models=["lenet"], backends=["ort"], batch_sizes=[1])
def test_median_is_repeatable(cnnbench, repeat):
    """The same cell measured twice: the medians agree within the spread each run states."""
    result = cnnbench.run()["latency_ms"]
    if repeat == 1:
        FIRST_RUN["latency"] = result
        return
    if "latency" not in FIRST_RUN:
        pytest.skip("the first repetition did not run")
    first = FIRST_RUN["latency"]
    difference = abs(result["p50"] - first["p50"]) / first["p50"]
    stated = first["ci95_rel"] + result["ci95_rel"]
    cnnbench.note(f"medians differ {difference:.1%}, stated spread {stated:.1%}")
    assert difference <= stated, f"p50 {first['p50']:.4f} then {result['p50']:.4f} ms: {difference:.1%} > {stated:.1%}"
