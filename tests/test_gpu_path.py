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
        ("inductor", "cpu", "fp16", "fp32 or bf16 only"),
        ("inductor", "cuda", "bf16", "CPU only"),
        ("ort", "cpu", "bf16", "no bf16 convolution kernels"),
        ("ort-trt", "cuda", "bf16", "use trt for bf16"),
        ("torchscript", "cpu", "bf16", "bf16 TorchScript is not built here"),
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
        assert r["math"] is None  # CPU arithmetic is what the precision says; "math" is for GPU rows
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
            assert r["device_time_ms"] is None  # its own stream: no CUDA events
        else:  # events bracket the device work inside each timed call
            assert 0 < r["device_time_ms"]["p50"] <= r["compute_latency_ms"]["p50"]
        assert r["math"]  # every GPU row says what it computed
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
    assert row["status"] == "passed", row["reason"]  # and it ran the accuracy pass's other batch sizes


# -- the GPU path's decisions, on the CPU (issue 10) -----------------------------------------
ORT_GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
# What onnxruntime-gpu 1.31.1's libonnxruntime_providers_tensorrt.so links (readelf -d; elf_needed reads the same).
ORT_131_TRT_PROVIDER_NEEDS = ["libcublas.so.13", "libnvinfer.so.10", "libnvonnxparser.so.10", "libcudart.so.13", "libc.so.6"]


def test_ort_tensorrt_provider_skips_naming_the_tensorrt_major_it_needs():
    """ONNX Runtime lists its TensorRT provider even when the TensorRT it links cannot load (TensorRT 11
    next to torch-tensorrt 2.14, the provider wants .so.10); sessions then quietly fall back to CUDA."""
    import ctypes

    from pytest_cnnbench.backends.ort import tensorrt_provider_reason

    try:
        ctypes.CDLL("libnvinfer.so.10")
        pytest.skip("TensorRT 10 is loadable here")
    except OSError:
        pass
    reason = tensorrt_provider_reason(ORT_GPU_PROVIDERS, ORT_131_TRT_PROVIDER_NEEDS)
    assert reason is not None and "needs TensorRT 10 (libnvinfer.so.10)" in reason
    assert "no TensorrtExecutionProvider" in tensorrt_provider_reason(["CUDAExecutionProvider", "CPUExecutionProvider"], [])
    assert tensorrt_provider_reason(ORT_GPU_PROVIDERS, ORT_131_TRT_PROVIDER_NEEDS, load=lambda soname: None) is None


def test_elf_needed_reads_the_linked_libraries():
    import sys

    from pytest_cnnbench.backends.ort import elf_needed

    if not sys.platform.startswith("linux"):
        pytest.skip("ELF files: Linux")
    import onnxruntime

    library = next((p for p in __import__("pathlib").Path(onnxruntime.__file__).parent.joinpath("capi").glob("*.so*")), None)
    assert library is not None
    needed = elf_needed(library)
    assert needed and all(".so" in name for name in needed)
    assert elf_needed(__import__("pathlib").Path(__file__)) == []  # not an ELF file


@pytest.fixture
def fresh_imports(monkeypatch, tmp_path):
    """A folder at the front of sys.path for stand-in packages, and no remembered import failures."""
    from pytest_cnnbench import lazy

    monkeypatch.setattr(lazy, "_BROKEN", {}, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("error", [
    'OSError("libtorchtrt.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")',  # torch ABI mismatch
    'Exception("import error when try to import _TensorRTProxyModule, got error libnvinfer.so.11: cannot open")',
])
def test_broken_torch_tensorrt_skips_trt_with_its_own_message(fresh_imports, error):
    import sys

    from pytest_cnnbench.backends.trt import TrtBackend

    if "torch_tensorrt" in sys.modules:
        pytest.skip("the real torch_tensorrt is already imported")
    (fresh_imports / "torch_tensorrt").mkdir()
    (fresh_imports / "torch_tensorrt" / "__init__.py").write_text(f"raise {error}\n")
    reason = TrtBackend().unavailable_reason("cuda", "fp32")
    message = eval(error).args[0]
    assert reason == f"torch_tensorrt failed to import: {error.split('(')[0]}: {message}"


def test_import_failures_are_told_apart(fresh_imports):
    from pytest_cnnbench.lazy import require, unavailable

    assert "is not installed" in unavailable("no_such_package_cnnbench", "gpu")
    assert "pip install 'pytest-cnnbench[gpu]'" in unavailable("no_such_package_cnnbench", "gpu")
    with pytest.raises(ImportError, match="is not installed"):
        require("no_such_package_cnnbench", "gpu")
    # e.g. nvidia-modelopt 0.47 imports requests and huggingface_hub without declaring them
    (fresh_imports / "needs_undeclared").mkdir()
    (fresh_imports / "needs_undeclared" / "__init__.py").write_text("import no_such_dependency_cnnbench\n")
    reason = unavailable("needs_undeclared", "gpu")
    assert "is installed but cannot be imported" in reason and "no_such_dependency_cnnbench" in reason
    assert "pip install 'pytest-cnnbench" not in reason


def test_device_events_bracket_the_launch_and_then_wait_on_the_end_event():
    """The end event is recorded right after the launch, before anything waits; then the host waits on
    that event. A call that cannot launch alone (ONNX Runtime, its own stream) gets no event times."""
    from pytest_cnnbench.backends.base import DeviceCall
    from pytest_cnnbench.gpu import time_device_calls

    log: list[str] = []

    class Event:  # stands in for torch.cuda.Event(enable_timing=True), recording the order of operations
        def __init__(self, name):
            self.name = name

        def record(self):
            log.append(f"{self.name}.record")

        def synchronize(self):
            log.append(f"{self.name}.synchronize")

        def elapsed_time(self, other):
            return 2.5  # ms

    names = iter(["start", "end"])
    call = DeviceCall(lambda: log.append("launch"), lambda: log.append("device synchronize"))
    wall, device = time_device_calls(call, 2, events=True, make_event=lambda: Event(next(names)))
    assert log == ["start.record", "launch", "end.record", "end.synchronize"] * 2
    assert device == [0.0025, 0.0025] and len(wall) == 2

    log.clear()
    assert time_device_calls(call, 1, events=False)[1] is None
    assert log == ["launch", "device synchronize"]  # without events: the whole call, ending with its synchronize
    log.clear()
    wall, device = time_device_calls(lambda: log.append("ort run + synchronize"), 1, events=True)
    assert device is None and log == ["ort run + synchronize"]


def test_math_labels_and_table_column():
    import torch

    from pytest_cnnbench import results as R
    from pytest_cnnbench.backends.base import torch_cuda_math
    from pytest_cnnbench.table import format_table

    assert R.empty_result({"model": "m", "backend": "b", "batch_size": 1})["math"] is None
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul  # real flags; settable without a GPU
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, False
        assert torch_cuda_math("fp32") == "fp32, TF32 conv"  # PyTorch's defaults
        cudnn.allow_tf32, matmul.allow_tf32 = True, True
        assert torch_cuda_math("fp32") == "fp32, TF32 conv+matmul"
        cudnn.allow_tf32, matmul.allow_tf32 = False, False
        assert torch_cuda_math("fp32") == "fp32, TF32 off"
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
    assert torch_cuda_math("fp16") == "fp16"

    def row(backend, precision, math):
        r = R.empty_result({"model": "m", "backend": backend, "batch_size": 1, "device": "cuda", "precision": precision})
        r.update(math=math, status="passed")
        return r

    plain = [row("eager", "fp16", "fp16"), row("eager", "fp32", None)]
    assert " math " not in format_table(plain)  # nothing to say: no column
    text = format_table(plain + [row("trt", "fp32", "fp32, TF32 off"), row("eager", "fp32", "fp32, TF32 conv")])
    header = text.splitlines()[0].split()
    assert header[header.index("prec") + 1] == "math"
    assert "fp32, TF32 off" in text and "fp32, TF32 conv" in text and "math = what the GPU computed" in text


def test_gpu_extra_pins_one_consistent_set():
    """torch-tensorrt 2.14 requires torch>=2.14,<2.15 and tensorrt-cu13>=11.1,<11.2; the `tensorrt` meta
    package (11.4) would ask for another TensorRT, and a loose pin let pip backtrack to torch 2.8 / TensorRT 10."""
    import tomllib

    from conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu = {req.split(">")[0].split("=")[0].split("<")[0].split("~")[0].strip(): req for req in extras["gpu"]}
    assert gpu["torch"].replace(" ", "") == "torch>=2.14,<2.15"
    assert gpu["torch-tensorrt"].replace(" ", "") == "torch-tensorrt>=2.14,<2.15"
    assert "tensorrt" not in gpu and "onnxruntime" not in gpu
    assert {"onnxruntime-gpu", "nvidia-modelopt", "nvidia-ml-py", "requests", "huggingface-hub"} <= gpu.keys()
    for name in ("cpu", "test", "plot"):  # CI installs these next to torch 2.15
        assert not any(req.startswith(("torch", "tensorrt", "onnxruntime-gpu")) for req in extras[name])


class TwoGpuNvml:
    """NVML on a machine with two GPUs, as NVML numbers them (it ignores CUDA_VISIBLE_DEVICES)."""

    UUIDS = ["GPU-aaaaaaaa-0000-1111-2222-333344445555", "GPU-bbbbbbbb-0000-1111-2222-333344445555"]
    MIG = "MIG-cccccccc-0000-1111-2222-333344445555"  # a MIG instance of the second GPU

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", self.UUIDS[index])

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.UUIDS + [self.MIG]:
            raise LookupError(f"NVML_ERROR_NOT_FOUND: {uuid}")
        return ("handle", uuid)


@pytest.mark.parametrize("torch_uuid, expected", [
    # CUDA_VISIBLE_DEVICES=1: CUDA device 0 is NVML's device 1, and torch reports its UUID bare.
    ("bbbbbbbb-0000-1111-2222-333344445555", TwoGpuNvml.UUIDS[1]),
    (TwoGpuNvml.UUIDS[1], TwoGpuNvml.UUIDS[1]),  # already in NVML's form
    (TwoGpuNvml.MIG, TwoGpuNvml.MIG),  # a MIG instance keeps its own prefix
])
def test_nvml_handle_is_the_device_with_the_cuda_uuid_not_the_cuda_index(torch_uuid, expected):
    """NVML ignores CUDA_VISIBLE_DEVICES: by CUDA's index (0) the handle would be another GPU."""
    from pytest_cnnbench import gpu

    assert gpu.nvml_handle_by_uuid(TwoGpuNvml(), torch_uuid) == ("handle", expected)


def test_nvml_handle_names_the_cuda_device_under_test():
    import torch

    from pytest_cnnbench import gpu

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and NVML to look a handle up")
    nvml = gpu._nvml()
    if nvml is None:
        pytest.skip("nvidia-ml-py is not installed or sees no driver")
    handle = gpu.nvml_handle(nvml, torch.cuda.current_device())
    assert nvml.nvmlDeviceGetName(handle) in (torch.cuda.get_device_name(), torch.cuda.get_device_name().encode())


def test_device_memory_is_over_the_cells_start():
    """The CUDA context and what earlier cells left in the caching allocator are not the cell's."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from pytest_cnnbench.gpu import DeviceMemory

    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MB held from before the cell
    cached = torch.empty(128 * 2**20, dtype=torch.uint8, device="cuda")
    del cached  # 128 MB free in the caching allocator
    with DeviceMemory(torch_allocator=True) as memory:
        block = torch.empty(16 * 2**20, dtype=torch.uint8, device="cuda")
    assert 15.9 <= memory.peak_mb <= 20 and "over cell start" in memory.source
    del block, held
