"""The backend protocol: say whether you can run here, prepare a model, run batches."""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Any, Callable, Optional, Protocol

import torch

from ..cache import ArtifactCache, hash_parts


@dataclasses.dataclass
class PrepareContext:
    device: str  # resolved: "cpu" or "cuda"
    precision: str
    batch_size: int
    input_shape: tuple[int, ...]
    cache: ArtifactCache
    model_key: str  # changes with architecture and weights
    log: Callable[[str], None] = print
    calibration: Optional[torch.Tensor] = None  # int8 cells: real, preprocessed images to calibrate on
    calibration_id: str = ""  # identifies those images in cache keys
    threads: Optional[int] = None  # CPU threads the prepared model should use (None: one per physical core)
    calibration_method: str = "minmax"  # --cnn-calibration: minmax, entropy or percentile
    calibration_note: str = ""  # which images ``calibration`` holds, e.g. "64 MNIST training images"
    inductor_mode: str = "default"  # --cnn-inductor-mode, for the inductor backend
    reprobe: bool = False  # --cnn-reprobe: choose variants afresh rather than reuse the remembered choice (between_sessions.py)


class Prepared(Protocol):
    """``run``, ``bind`` and ``close`` are required; the attributes and ``bind_device`` are optional."""

    provider: str  # what actually executes, e.g. "CPUExecutionProvider"
    artifact_bytes: Optional[int]  # size of the prepared model (file or parameters)
    cache_hit: bool  # the artifact came from the on-disk cache
    max_batch: Optional[int]  # largest batch it accepts (None: any); caps the accuracy pass
    math: Optional[str]  # the arithmetic that actually runs where it differs from the label, e.g. "fp32, TF32 conv"
    # What runs, down to the artifact and runtime version (e.g. "onnxruntime 1.32.0 CPUExecutionProvider onnx/<key>"):
    # its accuracy logits are cached under it, so a warm run skips the pass. None: never cached.
    artifact_id: Optional[str]

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits as float32 on the CPU for a float32 CPU batch (used for accuracy)."""

    def bind(self, batch: torch.Tensor) -> Callable[[], Any]:
        """The timed unit, end to end: host input in, host output out, device work finished.
        It is called under torch.inference_mode()."""

    def bind_device(self, batch: torch.Tensor) -> Optional[Callable[[], Any]]:
        """On a GPU: one call with the input already on the device, returning once the device is
        done (compute latency, as trtexec's GPU compute time). None on the CPU, where it equals bind.
        A ``DeviceCall`` (work on PyTorch's current stream) is also timed with CUDA events."""

    def close(self) -> None: ...


# How a backend's prepared models use CPU threads (``Backend.thread_use``; see ``thread_use()``):
THREADS_TORCH = "torch"  # calls run on torch's intra-op pool: torch.set_num_threads between calls changes the count
THREADS_AT_PREPARE = "prepare"  # the count is fixed when prepared (ctx.threads): another count is another instance
# Not said (None): prepared with ctx.threads and torch's count set; nothing switched between calls, no second instance.


class Backend(Protocol):
    """``name``, ``unavailable_reason`` and ``prepare`` are required; the attributes below are optional
    (``thread_use()`` and ``device_events()`` read them with their defaults)."""

    name: str
    thread_use: Optional[str]  # THREADS_TORCH, THREADS_AT_PREPARE or None (not said)
    device_events: bool  # its DeviceCall is timed with CUDA events too (work on PyTorch's current stream)

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        """None if this backend can run ``precision`` on ``device`` here, else why not."""

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> Prepared: ...


def thread_use(backend: Any) -> Optional[str]:
    """How ``backend`` uses CPU threads: its ``thread_use`` attribute, None where it says nothing."""
    use = getattr(backend, "thread_use", None)
    return use if use in (THREADS_TORCH, THREADS_AT_PREPARE) else None


def device_events(backend: Any) -> bool:
    """Whether ``backend``'s device calls are timed with CUDA events: it says so (``device_events``), or
    its memory is torch's allocator (its work is on PyTorch's current stream)."""
    return bool(getattr(backend, "device_events", False) or getattr(backend, "uses_torch_allocator", False))


def torch_precision_reason(label: str, device: str, precision: str) -> Optional[str]:
    """Why a PyTorch-run backend (eager, TorchScript) cannot run ``precision`` on ``device``."""
    if precision == "int8":
        return f"{label} has no int8 inference path here; use trt for int8"
    if precision == "fp16" and device != "cuda":
        return f"fp16 {label} runs on CUDA only (CPU half-precision convolutions are not a deployment path)"
    return None


# bf16 in hardware: x86 AVX512-BF16 (Cooper Lake, Zen 4) or AMX-BF16 (Sapphire Rapids), Arm BF16 (Graviton 3+).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def bf16_reason(label: str, device: str) -> Optional[str]:
    """Why ``label`` cannot run bf16 on ``device`` here (None: it can). On a CPU without bf16 instructions
    the runtimes would emulate it or fall back to fp32: neither is a bf16 measurement."""
    if device == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation argument
            native = torch.cuda.is_bf16_supported()
        if not native:
            return f"bf16 {label} needs a GPU with bf16 arithmetic (compute capability 8.0 or later); this one has none"
        return None
    from .ort_quant import cpu_flags

    flags = cpu_flags()
    if not set(BF16_CPU_FLAGS) & flags:
        return (f"bf16 {label} needs bf16 instructions (x86 avx512_bf16 or amx_bf16, Arm bf16) and this CPU's "
                "/proc/cpuinfo flags have none: it would run emulated or in fp32, which is not a bf16 measurement")
    return None


def check_bf16_output(label: str, output: Any) -> None:
    """bf16 must be what ran: a model cast to bf16 whose output is another dtype did not run in bf16."""
    dtype = getattr(output, "dtype", None)
    if dtype != torch.bfloat16:
        raise RuntimeError(f"{label} bf16: the output is {dtype}, not torch.bfloat16, so the model did not run in bf16")


def model_fingerprint(module: torch.nn.Module) -> str:
    """Identify a model by architecture and weights, for artifact cache keys."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buffer)
    return hash_parts(type(module).__qualname__, repr(module), buffer.getvalue())


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def torch_cuda_math(precision: str) -> str:
    """What PyTorch computes for ``precision`` on CUDA right now: fp32 convolutions use TF32 unless
    ``torch.backends.cudnn.allow_tf32`` is off (on by default), fp32 matmuls when
    ``torch.backends.cuda.matmul.allow_tf32`` is on (off by default)."""
    if precision != "fp32":
        return precision
    tf32 = [name for name, allowed in (("conv", torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.enabled),
                                       ("matmul", torch.backends.cuda.matmul.allow_tf32)) if allowed]
    return f"fp32, TF32 {'+'.join(tf32)}" if tf32 else "fp32, TF32 off"


class DeviceCall:
    """One device call with its input already on the GPU, for compute latency.

    Calling it launches the work and waits for the whole device. ``launch`` only enqueues the work
    on PyTorch's current stream, so that ``gpu.time_device_calls`` can record a CUDA event right
    after the launch and then wait on that event: the event pair then brackets the device work,
    not a host-side synchronize.
    """

    def __init__(self, launch: Callable[[], Any], synchronize: Callable[[], Any]) -> None:
        self.launch = launch
        self.synchronize = synchronize

    def __call__(self) -> Any:
        out = self.launch()
        self.synchronize()
        return out


class TorchPrepared:
    """A callable torch module (eager, TorchScript, or torch-tensorrt's compiled module) on a device."""

    max_batch: Optional[int] = None
    artifact_id: Optional[str] = None

    def __init__(self, module: Any, device: str, precision: str, provider: str, artifact_bytes: int,
                 cache_hit: bool = False, input_dtype: Optional[torch.dtype] = None, math: Optional[str] = None) -> None:
        self.module = module
        self.device = device
        self.dtype = input_dtype or torch_dtype(precision)
        self.provider = provider
        self.artifact_bytes = artifact_bytes
        self.cache_hit = cache_hit
        # PyTorch itself on CUDA: whether TF32 was allowed (torch_cuda_math); other backends say theirs.
        self.math = math if math is not None or device != "cuda" else torch_cuda_math(precision)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch.to(self.device, self.dtype)).float().cpu()

    def bind(self, batch: torch.Tensor) -> Callable[[], Any]:
        # The caller times under torch.inference_mode(); no per-call context manager here.
        if self.device == "cpu":
            return functools.partial(self.module, batch.to(self.device, self.dtype))
        host = batch.to(self.dtype).pin_memory() if torch.cuda.is_available() else batch.to(self.dtype)
        module, device = self.module, self.device

        def call_end_to_end() -> Any:
            return module(host.to(device, non_blocking=True)).cpu()  # .cpu() waits for the device

        return call_end_to_end

    def bind_device(self, batch: torch.Tensor) -> Optional[Callable[[], Any]]:
        if self.device == "cpu":
            return None
        staged = batch.to(self.device, self.dtype)
        return DeviceCall(functools.partial(self.module, staged), torch.cuda.synchronize)

    def close(self) -> None:
        self.module = None
