"""The GPU path: selection and skip logic everywhere, the real thing where a CUDA GPU exists."""

from __future__ import annotations

import pytest

from conftest import FAST, load_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BACKENDS = "eager,torchscript,ort,ort-trt,trt"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_onnxruntime_silent_cpu_fallback_fails_the_cell(tmp_path):
    """ONNX Runtime only warns when the CUDA provider cannot be had and runs on the CPU; the
    backend must refuse that rather than report CPU figures as GPU ones."""
    from pytest_cnnbench.backends.base import PrepareContext
    from pytest_cnnbench.backends.ort import OrtBackend
    from pytest_cnnbench.cache import ArtifactCache
    from pytest_cnnbench.models.lenet import LeNet

    if _has_cuda():
        pytest.skip("a CUDA GPU is present: ONNX Runtime would not fall back")
    ctx = PrepareContext("cuda", "fp32", 1, (1, 28, 28), ArtifactCache(tmp_path), "lenet-test")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"), pytest.raises(RuntimeError, match="fell back to CPUExecutionProvider instead of CUDAExecutionProvider"):
        OrtBackend().prepare(LeNet().eval(), ctx)


@pytest.mark.parametrize(
    "backend, device, precision, expected",
    [
        ("trt", "cpu", "fp32", "CUDA"),
        ("ort-trt", "cpu", "fp32", "CUDA GPUs only"),
        ("ort-trt", "cuda", "int8", "calibration table"),
        ("eager", "cpu", "fp16", "fp16 eager runs on CUDA only"),
        ("eager", "cpu", "int8", "no int8"),
        ("torchscript", "cuda", "int8", "no int8"),
        ("torchscript", "cpu", "fp16", "CUDA only"),
        ("ort", "cpu", "fp16", "cast back to fp32 at load"),
        ("ort", "cuda", "int8", "converted or quantized"),
        ("ort", "cpu", "int8", None),
        ("ort", "cpu", "fp32", None),
        ("inductor", "cpu", "int8", "PT2E"),
        ("inductor", "cpu", "fp16", "fp32 only"),
        ("inductor", "cuda", "fp32", "CPU only"),
        ("inductor", "cpu", "fp32", None),
        ("eager", "cpu", "fp32", None),
    ],
)
def test_unavailable_reasons(backend, device, precision, expected):
    from pytest_cnnbench import registry

    registry.load_builtins()
    reason = registry.backends.create(backend).unavailable_reason(device, precision)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_every_backend_and_precision_on_a_cpu_machine(tiny_project):
    """`--cnn-backend=all`-style run here: GPU-only cells skip with a reason, CPU cells measure, exit 0."""
    if _has_cuda():
        pytest.skip("this checks the CPU-only behaviour")
    out = tiny_project.path / "out.json"
    result = tiny_project.runpytest_subprocess(*FAST, f"--cnn-backend={BACKENDS}", "--cnn-precision=fp32,fp16,int8", f"--cnn-json={out}")
    assert result.ret == 0
    rows = load_results(out)
    assert len(rows) == 15
    measured = {(r["backend"], r["precision"]) for r in rows if r["status"] == "passed"}
    assert measured == {("eager", "fp32"), ("torchscript", "fp32"), ("ort", "fp32"), ("ort", "int8")}
    for r in rows:
        if (r["backend"], r["precision"]) not in measured:
            assert r["status"] == "skipped" and r["reason"], r
    assert sum(line.startswith("tiny ") for line in result.outlines) == 15


def test_cuda_requested_without_gpu_skips_everything(tiny_project):
    if _has_cuda():
        pytest.skip("a CUDA GPU is present")
    out = tiny_project.path / "out.json"
    result = tiny_project.runpytest_subprocess(*FAST, f"--cnn-backend={BACKENDS}", "--cnn-device=cuda", f"--cnn-json={out}")
    assert result.ret == 0
    rows = load_results(out)
    assert {r["status"] for r in rows} == {"skipped"}
    assert all("no CUDA GPU is available" in r["reason"] for r in rows)


def test_gpu_environment_never_imports_torch():
    import subprocess
    import sys

    code = "import sys; from pytest_cnnbench.gpu import gpu_environment; print(gpu_environment(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{} False"


# -- on a CUDA GPU (tox -e gpu; skipped on CPU-only machines and in CI here) ----------------
needs_gpu = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("backend", ["eager", "torchscript", "ort", "ort-trt", "trt"])
def test_gpu_cell_reports_end_to_end_compute_and_device_memory(tiny_project, backend):
    out = tiny_project.path / "out.json"
    result = tiny_project.runpytest_subprocess(*FAST, f"--cnn-backend={backend}", "--cnn-device=cuda", "--cnn-precision=fp32,fp16", f"--cnn-json={out}")
    rows = load_results(out)
    for r in rows:
        if r["status"] == "skipped":
            assert r["reason"]
            continue
        assert r["status"] == "passed", (r["reason"], result.stdout.str()[-3000:])
        assert r["device"] == "cuda"
        assert r["latency_ms"]["p50"] > 0 and r["compute_latency_ms"]["p50"] > 0
        assert r["memory_mb"]["device_peak"] is not None and r["memory_mb"]["device_peak_source"]
        if backend in ("ort", "ort-trt"):
            assert r["provider"] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        assert r["agreement"]["rel_err"] < (1e-2 if r["precision"] == "fp16" else 1e-3)


@needs_gpu
def test_trt_engine_is_cached(tiny_project):
    out = tiny_project.path / "out.json"
    for _ in range(2):
        tiny_project.runpytest_subprocess(*FAST, "--cnn-backend=trt", "--cnn-device=cuda", f"--cnn-json={out}")
    (row,) = load_results(out)
    if row["status"] == "skipped":
        pytest.skip(row["reason"])
    assert row["prepare_cached"] is True  # the second run loaded the engine the first one built
