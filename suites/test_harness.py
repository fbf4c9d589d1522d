"""The harness measured against itself: its overhead, its backends against hand tuning, its repeatability.

Run with ``pytest suites/ --cnn-selfcheck``.

The machines are shared and noisy, so each comparison is made in one timing loop: the
reference (a bare loop, the best hand-tuned configuration) runs as a *companion* of the
cell, alternating with it in chunks of about 2 ms (one call for large models) through all
of its timed blocks (``cnnbench.run(companions=...)``), and the ratio is taken chunk by
chunk (the median of the ratios of chunk medians), so drift of the machine's speed, even a
neighbour that comes and goes every few hundred milliseconds, affects both alike and
cancels. The ratio of the two p50s is noted beside it. The best hand
configuration is picked first, in a short interleaved screening, and then measured afresh
beside the cell (picking and measuring on the same calls would favour the reference by the
luck of the draw). Each ratio lands in the table's status column and the result files.

torch is imported inside the tests, so collecting this file stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import warnings
from typing import Any, Callable

import pytest

# Checks of the harness, not benchmarks: they run with --cnn-selfcheck (and only then).
pytestmark = pytest.mark.cnnbench_selfcheck

OVERHEAD_LIMIT = 0.03  # plugin p50 within 3% of a bare perf_counter loop
HAND_TUNED_LIMIT = 0.05  # backends within 5% of the best hand configuration


def screen(candidates: dict[str, Callable[[], Any]], rounds: int = 5, calls: int = 2) -> tuple[str, dict[str, float]]:
    """The fastest candidate by the median of interleaved blocks (each candidate's block in turn,
    the order reversed every other round), in milliseconds; restores torch's thread count."""
    import torch

    from pytest_cnnbench.timing import timed

    threads_before = torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    try:
        for call in candidates.values():
            call(), call()  # warm-up
        names = list(candidates)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                call = candidates[name]
                call()  # after switching: caches and thread pools settle
                times[name] += [timed(call) for _ in range(calls)]
    finally:
        torch.set_num_threads(threads_before)
    medians = {name: statistics.median(values) * 1000.0 for name, values in times.items()}
    return min(medians, key=medians.get), medians


def _ratio_note(cnnbench: Any, name: str, what: str) -> float:
    """The cell's time over the companion's, chunk by chunk; noted with the ratio of the p50s."""
    result = cnnbench.run()
    ours, reference = result["latency_ms"]["p50"], cnnbench.companions[name].p50
    companion_over_cell, _, chunks = cnnbench.paired[name]
    ratio = 1 / companion_over_cell  # the cell's time over the companion's
    cnnbench.note(f"{ratio - 1:+.1%} vs {what} over {chunks} paired chunks (p50s {ours:.4g} vs {reference:.4g} ms: "
                  f"{ours / reference - 1:+.1%}; {name})")
    return ratio


def _as_well_as_the_best_by_hand(cnnbench: Any, backend: str, candidates: dict[str, Callable[[], Any]]) -> None:
    """Screen the hand configurations, time the cell with the fastest as its companion in the same
    loop, and hold the cell within ``HAND_TUNED_LIMIT`` of it, chunk by chunk."""
    import torch

    with torch.inference_mode():
        best, screened = screen(candidates)
    cnnbench.run(companions={best: candidates[best]})
    ratio = _ratio_note(cnnbench, best, "the best by hand")
    assert ratio <= 1 + HAND_TUNED_LIMIT, (
        f"{backend} {ratio - 1:+.1%} vs {best} in the same loop, chunk by chunk (p50s "
        f"{cnnbench.run()['latency_ms']['p50']:.2f} vs {cnnbench.companions[best].p50:.2f} ms; screening: {screened})")


@pytest.mark.cnnbench(models=["lenet"], backends=["eager"], batch_sizes=[1])
def test_overhead_against_bare_loop(cnnbench, cnn_model, cnn_dataset):
    _, images, _ = cnn_dataset
    x, module = images[:1].contiguous(), cnn_model.module
    # The very call the eager cell times (its prepared model is this module), timed by a plain
    # perf_counter loop, at the cell's thread count and under the same inference mode.
    cnnbench.run(companions={"bare loop": lambda: module(x)})
    ratio = _ratio_note(cnnbench, "bare loop", "a bare perf_counter loop")
    assert abs(ratio - 1) <= OVERHEAD_LIMIT, (
        f"plugin {ratio - 1:+.1%} vs a bare loop in the same loop, chunk by chunk (p50s "
        f"{cnnbench.run()['latency_ms']['p50'] * 1000:.1f} vs {cnnbench.companions['bare loop'].p50 * 1000:.1f} us)")


def _hand_sessions(onnx_path: str, array: Any) -> dict[str, Callable[[], Any]]:
    """What an expert would try by hand: full graph optimization, sequential execution,
    1 or all physical cores, plain run or I/O bound once."""
    import numpy as np
    import onnxruntime as ort

    from pytest_cnnbench.environment import physical_cores

    candidates: dict[str, Callable[[], Any]] = {}
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
    import torch

    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "resnet50-static.onnx"
    # By hand: a static batch-1 export (the plugin exports one model with a dynamic batch axis).
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cnn_model.module.eval(), (x,), str(path), dynamo=True, external_data=False)
    _as_well_as_the_best_by_hand(cnnbench, "ort", _hand_sessions(str(path), x.numpy()))


@pytest.mark.cnnbench(models=["resnet50"], backends=["torchscript"], batch_sizes=[1], dataset="synthetic")
def test_torchscript_as_well_as_by_hand(cnnbench, cnn_model):
    import torch

    from pytest_cnnbench.environment import physical_cores

    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(cnn_model.module.eval(), x)
        frozen = torch.jit.freeze(traced)
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(cnn_model.module.eval(), x)))
    candidates = {}
    for threads in sorted({1, physical_cores()}):
        for name, module in (("traced", traced), ("frozen", frozen), ("frozen+optimized", optimized)):
            def call(m=module, t=threads):
                torch.set_num_threads(t)
                return m(x)
            candidates[f"{name}/{threads}t"] = call
    _as_well_as_the_best_by_hand(cnnbench, "torchscript", candidates)


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
