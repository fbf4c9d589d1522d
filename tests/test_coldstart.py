"""Cold start (--cnn-cold-start): real child interpreters, the runtimes' own cache evidence, containment."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from conftest import FAST, FIXTURES, load_results
from pytest_cnnbench.coldstart import NO_ARTIFACT
from pytest_cnnbench.coldstart.table import format_cold_start_table

onnx = pytest.importorskip("onnx")


def tiny_onnx(path: Path, seed: int) -> Path:
    """A 1x3x8x8 -> 4 convolution network as ONNX, weights from ``seed`` (no torch: quick)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"]), helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]), helper.make_node("Flatten", ["pool"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def deployment(runtime: str, artifact: Path, root: Path):
    from pytest_cnnbench.coldstart import loaders, run

    loader = loaders.BUILTIN[runtime]
    spec = {"artifact": str(artifact), "input_shape": [1, 3, 8, 8], "threads": 1, "precision": "fp32",
            "device": "cpu", "loader_module": loader.__module__, "loader_name": loader.__qualname__}
    return run.with_runtime_cache(run.Deployment(loader, artifact, spec), runtime, root)


@pytest.mark.parametrize("runtime", ["openvino", "ort"])
def test_warm_start_is_a_hit_by_the_runtimes_evidence_and_a_changed_model_misses(runtime, tmp_path, monkeypatch):
    pytest.importorskip({"openvino": "openvino", "ort": "onnxruntime"}[runtime])
    from pytest_cnnbench.coldstart.run import run_once

    monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path / "locks"))  # the children lock here, not beside other tests
    root = tmp_path / "coldstart"
    first = deployment(runtime, tiny_onnx(tmp_path / "a.onnx", seed=0), root)
    cold = run_once(first, "cold", timeout=120)
    warm = run_once(first, "warm", timeout=120)
    assert cold["runtime_cache"] == "miss", cold["evidence"]
    assert warm["runtime_cache"] == "hit", warm["evidence"]
    if runtime == "openvino":
        assert "LOADED_FROM_CACHE=False" in cold["evidence"] and ".blob" in cold["evidence"]
        assert "LOADED_FROM_CACHE=True" in warm["evidence"] and "none written" in warm["evidence"]
    else:
        assert "ORT_DISABLE_ALL" in warm["evidence"] and "wrote" in cold["evidence"]
    # Other weights, same everything else: the runtime's cache must not answer for them.
    changed = deployment(runtime, tiny_onnx(tmp_path / "b.onnx", seed=1), root)
    again = run_once(changed, "warm", timeout=120)
    assert again["runtime_cache"] == "miss", again["evidence"]
    assert run_once(changed, "warm", timeout=120)["runtime_cache"] == "hit"  # and it is cached in turn
    for stage in ("interpreter_start_s", "import_s", "load_s", "first_inference_ms", "first10_ms", "steady_p50_ms",
                  "peak_rss_mb"):
        assert warm[stage] > 0, stage
    # What the runtimes load runs as code: its folders are the user's alone.
    assert stat.S_IMODE(first.shared.stat().st_mode) == 0o700 and stat.S_IMODE(root.stat().st_mode) == 0o700


def test_an_aotinductor_package_answers_in_a_fresh_process_without_the_models_code(tmp_path, monkeypatch):
    """The inductor row's deployment: a .pt2 from aoti_compile_and_package, loaded with aoti_load_package
    in a child that has neither the model's class nor a compile step (about 20 s: one C++ build)."""
    torch = pytest.importorskip("torch")
    from pytest_cnnbench.backends.inductor import cxx_compiler

    if cxx_compiler() is None:
        pytest.skip("AOTInductor needs a C++ compiler")
    from pytest_cnnbench.coldstart import loaders, run

    monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path / "locks"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8),))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "tiny.pt2"))
    spec = {"artifact": package, "input_shape": [1, 3, 8, 8], "threads": 1, "precision": "fp32", "device": "cpu",
            "loader_module": loaders.AotiLoader.__module__, "loader_name": "AotiLoader"}
    found = run.with_runtime_cache(run.Deployment(loaders.AotiLoader, Path(package), spec), None, tmp_path / "coldstart")
    record = run.run_once(found, "cold", timeout=300)
    assert record["runtime_cache"] == "none" and record["load_s"] > 0 and record["steady_p50_ms"] > 0


HOLD_LOCK = """
import sys, time
from pytest_cnnbench.worklock import MachineLock
with MachineLock("cpu").exclusive():
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_the_child_takes_the_timing_lock_itself_and_the_parent_must_not_hold_it(tmp_path, monkeypatch):
    import subprocess
    import sys

    from pytest_cnnbench.coldstart.run import run_child, run_once
    from pytest_cnnbench.worklock import MachineLock

    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path / "locks"))
    found = deployment("ort", tiny_onnx(tmp_path / "a.onnx", seed=0), tmp_path / "coldstart")
    # Another worker's timed section: the child waits for it before its first stage.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        record = run_once(found, "cold", timeout=120)
    finally:
        holder.wait(timeout=30)
    assert record["lock_wait_s"] > 1.5, record
    assert run_once(found, "warm", timeout=120)["lock_wait_s"] < 1.5  # nobody holds it now
    # A parent inside a timed section would wait on its own child for ever: refused.
    with MachineLock("cpu").exclusive(), pytest.raises(RuntimeError, match="holds the machine's timing lock"):
        run_child(found.spec, timeout=30)


def test_raising_and_hanging_children_fail_their_cells_and_the_session_goes_on(tiny_project: pytest.Pytester,
                                                                               tmp_path):
    project = tiny_project
    project.makeconftest((FIXTURES / "tiny_conftest.py").read_text() + "\n"
                         + (FIXTURES / "coldstart_conftest.py").read_text())
    project._monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path / "locks"))
    out = project.path / "out.json"
    started = time.monotonic()
    result = project.runpytest_subprocess(
        *FAST, "--cnn-backend=eager,openvino,ort-deploy-raises,ort-deploy-hangs", "--cnn-threads=1", "--cnn-cold-start",
        "--cnn-cold-start-runs=1", "--cnn-cold-start-timeout=8", f"--cnn-json={out}", timeout=400)
    assert time.monotonic() - started < 300
    result.assert_outcomes(passed=2, failed=2)
    rows = {r["backend"]: r for r in load_results(out)}
    raising, hanging = rows["ort-deploy-raises"], rows["ort-deploy-hangs"]
    assert raising["status"] == "failed"
    assert raising["reason"].endswith("cold start: the child failed: RuntimeError: the artifact refused to load, on purpose")
    assert hanging["status"] == "failed"
    assert hanging["reason"].endswith("cold start: the child was killed after 8 s: it never answered")
    assert raising["latency_ms"] is not None and raising["cold_start"]["status"] == "failed"  # measured, then failed
    assert rows["eager"]["status"] == "passed" and rows["eager"]["cold_start"]["status"] == NO_ARTIFACT
    openvino = rows["openvino"]["cold_start"]
    assert rows["openvino"]["status"] == "passed" and openvino["status"] == "measured"
    assert openvino["cold"]["runtime_cache"] == "miss" and openvino["warm"]["runtime_cache"] == "hit"
    assert any("LOADED_FROM_CACHE=True" in e for e in openvino["warm"]["evidence"])
    for key in ("import_s", "load_s", "first_inference_ms", "first10_ms", "steady_p50_ms", "peak_rss_mb", "artifact_mb",
                "first_answer_s", "interval"):
        assert openvino["cold"][key] and openvino["warm"][key], key
    assert openvino["os_page_cache"].startswith("warm")
    result.stdout.fnmatch_lines(["*cold start: a fresh Python process per run*",
                                 "*tiny*eager*no deployable artifact*",
                                 "*tiny*openvino*miss*hit*",
                                 "*tiny*ort-deploy-hangs*FAILED: the child was killed after 8 s*",
                                 "cold start: quickest first answer for tiny: openvino bs1*"])


def test_cold_start_options_are_checked(pytester: pytest.Pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("--cnn-cold-start-runs=0", "-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*--cnn-cold-start-runs: '0' is not a positive integer*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_table_has_a_row_per_cell_and_names_the_quickest_backend_per_model():
    def row(backend, status="measured", cold=None, warm=None, error=None):
        return {"model": "lenet", "backend": backend, "precision": "fp32", "batch_size": 1,
                "cold_start": {"status": status, "artifact_mb": 0.2, "cold": cold or {}, "warm": warm or {}, "error": error}}

    def entry(first, cache):
        return {"first_answer_s": first, "runs": 3, "interval": {"first_answer_s": [first - 0.1, first + 0.1]},
                "runtime_cache": cache, "interpreter_start_s": 0.04, "import_s": 0.3, "load_s": 0.1,
                "first_inference_ms": 1.0, "steady_p50_ms": 0.02, "peak_rss_mb": 90.0}

    results = [row("eager", NO_ARTIFACT), row("ort", cold=entry(0.9, "miss"), warm=entry(0.5, "hit")),
               row("openvino", cold=entry(1.5, "miss"), warm=entry(0.8, "hit")),
               row("torchscript", "failed", error="the child was killed after 8 s: it never answered"),
               {"model": "resnet50", "backend": "ort", "precision": "fp32", "batch_size": 1}]
    text = format_cold_start_table(results)
    lines = text.splitlines()
    assert [line.split()[1] for line in lines[3:7]] == ["eager", "ort", "openvino", "torchscript"]
    assert "no deployable artifact" in lines[3]
    assert "0.90 s [0.80-1.00]" in lines[4] and "0.50 s [0.40-0.60]" in lines[4] and "hit" in lines[4]
    assert "FAILED: the child was killed after 8 s" in lines[6]
    assert lines[-1] == "cold start: quickest first answer for lenet: ort bs1 (0.50 s, warm run)"
    assert format_cold_start_table([results[-1]]) is None
