"""ONNX Runtime: export once with torch.onnx (dynamic batch axis), cache by model content.

``ort`` runs on the CPU execution provider, or the CUDA one with ``--cnn-device=cuda``;
``ort-trt`` runs on TensorRT's execution provider (CUDA only). ONNX Runtime silently
falls back to another provider when the one asked for cannot be created: the cell
fails then, rather than report CPU figures as GPU ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .. import progress
from ..cache import hash_parts
from ..environment import physical_cores
from ..lazy import require, unavailable
from .base import THREADS_AT_PREPARE, PrepareContext

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Checked with ONNX Runtime 1.32 on x86: a model converted to fp16 (onnxruntime.transformers.float16, fp32
# inputs/outputs kept) loads on the CPU provider, but its CastFloat16Transformer and
# FuseFp16InitializerToFp32NodeTransformer turn the fp16 convolutions back into fp32 ones (the optimized
# graph has fp32 Conv nodes, NCHWc-blocked, and casts), since the provider has no fp16 Conv kernels there.
# Timing it would report fp32 figures under an fp16 label.
CPU_FP16_REASON = ("fp16 with ONNX Runtime's CPUExecutionProvider is not real on this CPU: it has no fp16 convolution "
                   "kernels here, and an fp16 model is cast back to fp32 at load (CastFloat16Transformer, "
                   "FuseFp16InitializerToFp32NodeTransformer), so its figures would be fp32's; use int8 on the CPU, "
                   "or ort-trt / trt for fp16 on a GPU")


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    progress.update("export to ONNX (torch.onnx)")
    example = torch.randn(2, *input_shape)  # 2, not 1: the exporter specializes size-1 dims
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports progress on stdout; keep it out of the test output.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: batch},),
        )


TENSORRT_PROVIDER_LIBRARY = "libonnxruntime_providers_tensorrt.so"
_TENSORRT_SONAME = re.compile(r"lib(nvinfer|nvonnxparser)\.so\.(\d+)$")


def elf_needed(path: Path) -> list[str]:
    """The shared libraries an ELF file links (its DT_NEEDED entries), read without loading it."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return []
    end = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # ELF64
        shoff, (shentsize, shnum), section, entry = (struct.unpack_from(end + "Q", data, 0x28)[0],
                                                      struct.unpack_from(end + "HH", data, 0x3A), "IIQQQQIIQQ", "qQ")
    else:  # ELF32
        shoff, (shentsize, shnum), section, entry = (struct.unpack_from(end + "I", data, 0x20)[0],
                                                      struct.unpack_from(end + "HH", data, 0x2E), "IIIIIIIIII", "iI")
    sections = [struct.unpack_from(end + section, data, shoff + i * shentsize) for i in range(shnum)]
    needed: list[str] = []
    for _name, kind, _flags, _addr, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link is the string table
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, struct.calcsize(end + entry)):
            tag, value = struct.unpack_from(end + entry, data, at)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                start = strings + value
                needed.append(data[start:data.index(b"\0", start)].decode())
    return needed


def tensorrt_provider_reason(available: Sequence[str], needed: Sequence[str],
                             load: Callable[[str], Any] = ctypes.CDLL) -> Optional[str]:
    """Why ONNX Runtime's TensorRT provider cannot run here, or None.

    ``available`` is ``onnxruntime.get_available_providers()``, which lists the provider whenever
    ONNX Runtime was built with it; ``needed`` are the libraries its provider library links. If
    the TensorRT it was built against cannot be loaded (onnxruntime-gpu 1.31 links
    ``libnvinfer.so.10``; torch-tensorrt 2.14 brings TensorRT 11, ``.so.11``), session creation
    quietly falls back to CUDA.
    """
    if "TensorrtExecutionProvider" not in available:
        return (f"this ONNX Runtime has no TensorrtExecutionProvider (it has {', '.join(available)}); "
                "install onnxruntime-gpu")
    for soname in needed:
        match = _TENSORRT_SONAME.match(soname)
        if not match:
            continue
        try:
            load(soname)
        except OSError as exc:
            return (f"ONNX Runtime's TensorRT provider needs TensorRT {match.group(2)} ({soname}), which cannot be "
                    f"loaded here ({exc}); torch-tensorrt 2.14 brings TensorRT 11, so ort-trt needs an environment "
                    f"with TensorRT {match.group(2)} on the library path")
    return None


class OrtPrepared:
    max_batch: Optional[int] = None
    artifact_id: Optional[str] = None
    calibration: Optional[str] = None  # int8: which images calibrated it and how
    quantization: Optional[str] = None  # int8: the scheme
    thread_settings: Optional[dict[str, Any]] = None  # what sets and places its threads (OrtBackend.thread_settings)

    def __init__(self, session: Any, provider: str, artifact_bytes: int, cache_hit: bool, device: str,
                 math: Optional[str] = None) -> None:
        self.session = session
        self.provider = provider
        self.artifact_bytes = artifact_bytes
        self.cache_hit = cache_hit
        self.device = device
        self.math = math  # what the provider computes, on CUDA (e.g. "fp32, TF32 allowed")

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.float().contiguous().numpy()})
        return torch.from_numpy(logits)

    def bind(self, batch: torch.Tensor) -> Callable[[], Any]:
        if self.device == "cpu":
            # As tuned by hand: input and a preallocated output bound once, so a call allocates nothing.
            import onnxruntime as ort

            array = batch.float().contiguous().numpy()
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, array)
            output = ort.OrtValue.ortvalue_from_shape_and_type(self.output_shape(len(array)), np.float32, "cpu")
            binding.bind_ortvalue_output(OUTPUT_NAME, output)
            run, keep = self.session.run_with_iobinding, (array, output)  # bound buffers live with the call
            return lambda: run(binding) or keep
        # Host numpy in, host numpy out: on CUDA this includes both copies, like trtexec's latency.
        feed = {INPUT_NAME: batch.float().contiguous().numpy()}
        run, outputs = self.session.run, [OUTPUT_NAME]
        return lambda: run(outputs, feed)

    def output_shape(self, batch_size: int) -> tuple[int, ...]:
        dims = self.session.get_outputs()[0].shape
        return (batch_size, *(int(d) for d in dims[1:]))

    def bind_device(self, batch: torch.Tensor) -> Optional[Callable[[], Any]]:
        if self.device == "cpu":
            return None
        # Input and output bound to device memory owned by torch: no copies in the timed call.
        staged = batch.float().contiguous().to("cuda")
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", staged.device.index or 0, np.float32, tuple(staged.shape), staged.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda")
        session, synchronize = self.session, torch.cuda.synchronize

        def call() -> Any:
            session.run_with_iobinding(binding)
            synchronize()  # ONNX Runtime works on its own stream; wait for the whole device
            return staged  # keeps the bound input alive as long as the call

        return call

    def close(self) -> None:
        self.session = None


class OrtBackend:
    name = "ort"
    thread_use = THREADS_AT_PREPARE  # see base.thread_use
    provider_for_device = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        extra = "cpu" if device == "cpu" else "gpu"
        reason = unavailable("onnxruntime", extra=extra)
        if reason:
            return reason
        ort = require("onnxruntime", extra=extra)
        reason = self.precision_reason(device, precision)
        if reason:
            return reason
        wanted = self.provider_for_device[device]
        if wanted not in ort.get_available_providers():
            return (f"this ONNX Runtime has no {wanted} (it has {', '.join(ort.get_available_providers())}); "
                    "install onnxruntime-gpu for CUDA and TensorRT providers")
        return None

    def precision_reason(self, device: str, precision: str) -> Optional[str]:
        if device == "cpu" and precision == "int8":
            return None  # static QDQ quantization (ort_quant.py)
        if precision == "bf16":
            return (f"bf16 with ONNX Runtime's {self.provider_for_device[device]} is not a path: it has no bf16 "
                    "convolution kernels (a bf16 ONNX model would not load or would run in fp32); eager, inductor and "
                    "openvino run bf16 on the CPU")
        if device == "cpu" and precision == "fp16":
            import platform

            if platform.machine().lower() in ("arm64", "aarch64"):
                return "fp16 with ONNX Runtime's CPUExecutionProvider on ARM is not built in this plugin (checked on x86 only)"
            return CPU_FP16_REASON
        if precision != "fp32":
            return (f"{precision} with ONNX Runtime's {self.provider_for_device[device]} needs a converted or quantized "
                    "ONNX model, which this backend does not make; use ort-trt (fp16) or trt (fp16, int8) on a GPU")
        return None

    def session_options(self, ort: Any, threads: Optional[int] = None) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Its intra-op threads stop spinning when a run returns. By default they spin on, and whatever
        # runs next on the same cores pays: eager AlexNet right after an ONNX Runtime call took 35-47 ms
        # against 22-27 ms alone here, so a speedup timed side by side came out 2.3-2.7x instead of
        # 1.5-1.9x. ONNX Runtime's own latency is the same either way (15-17 ms).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return options

    @staticmethod
    def thread_settings(session: Any) -> dict[str, Any]:
        """What sets and places the session's threads, as the session reports it (the row's thread_pinning)."""
        options = session.get_session_options()
        out: dict[str, Any] = {"intra_op_num_threads": options.intra_op_num_threads,
                               "inter_op_num_threads": options.inter_op_num_threads}
        for key in ("session.intra_op_thread_affinities", "session.force_spinning_stop", "session.intra_op.allow_spinning"):
            try:
                out[key] = options.get_session_config_entry(key) or None
            except Exception:  # not set: ONNX Runtime's default
                out[key] = None
        return out

    def providers(self, ctx: PrepareContext) -> list[Any]:
        return [self.provider_for_device[ctx.device]]

    def export(self, module: torch.nn.Module, ctx: PrepareContext) -> tuple[Path, bool]:
        key = hash_parts("onnx", ctx.model_key, str(OPSET), torch.__version__)
        return ctx.cache.get_or_build("onnx", key, ".onnx", lambda tmp: export_onnx(module, ctx.input_shape, tmp))

    def math(self, session: Any, ctx: PrepareContext) -> Optional[str]:
        """What the CUDA provider computes: fp32 in TF32 unless its ``use_tf32`` option is 0 (1 by default)."""
        if ctx.device != "cuda":
            return None
        options = session.get_provider_options().get("CUDAExecutionProvider", {})
        return "fp32, TF32 allowed" if options.get("use_tf32", "1") != "0" else "fp32, TF32 off"

    def artifact(self, module: torch.nn.Module, ctx: PrepareContext) -> tuple[Path, bool]:
        """The model file this cell runs: the fp32 export, or its int8 quantization (both cached)."""
        path, cache_hit = self.export(module, ctx)
        if ctx.precision == "int8":
            from .ort_quant import quantized_model

            path, cache_hit = quantized_model(path, ctx, INPUT_NAME)
        return path, cache_hit

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> OrtPrepared:
        ort = require("onnxruntime", extra="cpu" if ctx.device == "cpu" else "gpu")
        path, cache_hit = self.artifact(module, ctx)
        progress.update(f"ONNX Runtime session ({self.provider_for_device[ctx.device]})")
        try:
            session = ort.InferenceSession(str(path), sess_options=self.session_options(ort, ctx.threads), providers=self.providers(ctx))
        except Exception as exc:
            if not cache_hit:
                raise
            # A cached file that passes its checksum but does not load: rebuild once.
            ctx.cache.discard(path, f"ONNX Runtime cannot load it: {type(exc).__name__}: {exc}")
            path, cache_hit = self.artifact(module, ctx)
            session = ort.InferenceSession(str(path), sess_options=self.session_options(ort, ctx.threads), providers=self.providers(ctx))
        wanted = self.providers(ctx)[0]
        wanted = wanted[0] if isinstance(wanted, tuple) else wanted
        active = session.get_providers()
        if active[0] != wanted:
            raise RuntimeError(f"ONNX Runtime fell back to {active[0]} instead of {wanted}; refusing to report its figures as {wanted}'s")
        prepared = OrtPrepared(session, active[0], path.stat().st_size, cache_hit, ctx.device, self.math(session, ctx))
        prepared.thread_settings = self.thread_settings(session)
        prepared.artifact_id = f"onnxruntime {ort.__version__} {active[0]} {ctx.cache.content_id(path)}"
        prepared.artifact_path = path  # the model file a deployment loads (coldstart/)
        if ctx.precision == "int8":
            from .ort_quant import this_cpu_scheme

            prepared.calibration = f"{ctx.calibration_note}, {ctx.calibration_method}"
            prepared.quantization = this_cpu_scheme().describe()
        return prepared


class OrtTensorrtBackend(OrtBackend):
    """ONNX Runtime with TensorRT's execution provider (CUDA for what TensorRT cannot take)."""

    name = "ort-trt"
    provider_for_device = {"cpu": "TensorrtExecutionProvider", "cuda": "TensorrtExecutionProvider"}

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if device != "cuda":
            return "ONNX Runtime's TensorRT provider runs on CUDA GPUs only"
        reason = super().unavailable_reason(device, precision)
        if reason:
            return reason
        import onnxruntime as ort

        library = Path(ort.__file__).parent / "capi" / TENSORRT_PROVIDER_LIBRARY
        needed = elf_needed(library) if library.is_file() else []
        return tensorrt_provider_reason(ort.get_available_providers(), needed)

    def precision_reason(self, device: str, precision: str) -> Optional[str]:
        if precision == "int8":
            return "int8 with ONNX Runtime's TensorRT provider needs a calibration table, which this backend does not make; use trt for int8"
        if precision == "bf16":
            return "bf16 with ONNX Runtime's TensorRT provider is not built here; use trt for bf16"
        return None

    def math(self, session: Any, ctx: PrepareContext) -> Optional[str]:
        # TensorRT's builder allows TF32 by default and the provider has no option to clear it; with
        # trt_fp16_enable TensorRT picks fp16 or fp32 per layer (TF32 where fp32 is picked).
        return "fp16/fp32 mix (TensorRT picks), TF32 allowed" if ctx.precision == "fp16" else "fp32, TF32 allowed"

    def providers(self, ctx: PrepareContext) -> list[Any]:
        # Engines are cached by ONNX Runtime itself, beside our ONNX cache, keyed by GPU and TensorRT version.
        engine_dir = ctx.cache.root / "ort-trt-engines"
        engine_dir.mkdir(parents=True, exist_ok=True)
        options = {
            "device_id": 0,
            "trt_fp16_enable": ctx.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engine_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engine_dir),
            # One profile covering the accuracy pass and every timed batch size.
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{'x'.join(map(str, ctx.input_shape))}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{ctx.batch_size}x{'x'.join(map(str, ctx.input_shape))}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{max(ctx.batch_size, 64)}x{'x'.join(map(str, ctx.input_shape))}",
        }
        return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> OrtPrepared:
        prepared = super().prepare(module, ctx)
        prepared.max_batch = max(ctx.batch_size, 64)
        return prepared
