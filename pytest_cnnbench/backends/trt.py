"""TensorRT through torch-tensorrt's dynamo (torch.export) path. CUDA GPUs only; skips cleanly elsewhere.

- fp32 / fp16: the module and its input are cast to the precision (explicit typing, so
  TensorRT runs what was asked for rather than picking kernels itself).
- int8: post-training quantization with NVIDIA ModelOpt (the path torch-tensorrt
  documents for the dynamo frontend), calibrated on real images of the dataset in use,
  then compiled with int8 enabled.
- Engines are cached (``torch_tensorrt.save`` as an ExportedProgram) by model content,
  precision, batch profile, GPU name and the TensorRT / torch-tensorrt versions; the
  build time of this run is the cell's prepare time.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

import torch

from ..cache import hash_parts
from ..environment import package_version
from ..lazy import require, unavailable
from .base import PrepareContext, TorchPrepared, parameter_bytes

CALIBRATION_SAMPLES = 512


def _tensorrt_versions() -> str:
    return f"tensorrt {package_version('tensorrt')} torch-tensorrt {package_version('torch-tensorrt')}"


class TrtBackend:
    name = "trt"

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if device != "cuda":
            if not torch.cuda.is_available():
                return "TensorRT needs a CUDA GPU and none is available (torch.cuda.is_available() is False)"
            return "TensorRT runs on CUDA devices only (--cnn-device=cpu was given)"
        # Not only "not installed": TensorRT's libraries may fail to load, or torch-tensorrt may be
        # built for another torch; the cell then skips with the library's own message.
        reason = unavailable("torch_tensorrt", extra="gpu")
        if reason:
            return reason
        if precision == "int8":
            reason = unavailable("modelopt.torch.quantization", extra="gpu")
            if reason:
                return f"int8 TensorRT needs NVIDIA ModelOpt for calibration: {reason}"
        return None

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> TorchPrepared:
        torch_tensorrt = require("torch_tensorrt", extra="gpu")
        dtype = torch.float16 if ctx.precision == "fp16" else torch.float32
        max_batch = max(ctx.batch_size, 64)  # the accuracy pass runs in batches of up to this
        profile = torch_tensorrt.Input(
            min_shape=(1, *ctx.input_shape), opt_shape=(ctx.batch_size, *ctx.input_shape),
            max_shape=(max_batch, *ctx.input_shape), dtype=dtype,
        )
        key = hash_parts("trt", ctx.model_key, ctx.precision, f"{ctx.batch_size}/{max_batch}",
                         torch.cuda.get_device_name(), _tensorrt_versions(), ctx.calibration_id)
        provider = f"tensorrt ({torch.cuda.get_device_name()})"
        path = ctx.cache.lookup("trt", key, ".ep")
        if path is not None:
            try:
                compiled = torch_tensorrt.load(str(path)).module()
                return self._prepared(compiled, ctx, provider, path.stat().st_size, True, max_batch, dtype)
            except Exception as exc:  # an engine from another build, or corrupt despite its checksum
                ctx.cache.discard(path, f"does not load: {type(exc).__name__}: {exc}")

        model = copy.deepcopy(module).eval().to("cuda", dtype)
        settings: dict[str, Any] = {"use_explicit_typing": True}
        if ctx.precision == "int8":
            model = self._quantize_int8(model, ctx)
            settings = {"enabled_precisions": {torch.int8}}
        if ctx.precision == "int8":
            from modelopt.torch.quantization.utils import export_torch_mode

            with export_torch_mode():  # lets torch.export trace ModelOpt's quantize/dequantize nodes
                compiled = self._compile(torch_tensorrt, model, profile, settings)
        else:
            compiled = self._compile(torch_tensorrt, model, profile, settings)
        example = torch.randn(ctx.batch_size, *ctx.input_shape, device="cuda", dtype=dtype)
        size = parameter_bytes(module)
        try:
            path = ctx.cache.store("trt", key, ".ep", lambda tmp: torch_tensorrt.save(compiled, str(tmp), arg_inputs=[example]))
            size = path.stat().st_size
        except Exception as exc:  # saving needs the C++ runtime; without it the engine is rebuilt next run
            warnings.warn(f"cnnbench: TensorRT engine not cached ({type(exc).__name__}: {exc})")
        return self._prepared(compiled, ctx, provider, size, False, max_batch, dtype)

    @staticmethod
    def _compile(torch_tensorrt: Any, model: torch.nn.Module, profile: Any, settings: dict[str, Any]) -> Any:
        try:
            return torch_tensorrt.compile(model, ir="dynamo", arg_inputs=[profile], **settings)
        except TypeError:
            # torch-tensorrt before 2.5 names the argument ``inputs`` and has no explicit typing flag.
            settings.pop("use_explicit_typing", None)
            return torch_tensorrt.compile(model, ir="dynamo", inputs=[profile], **settings)

    @staticmethod
    def _quantize_int8(model: torch.nn.Module, ctx: PrepareContext) -> torch.nn.Module:
        import modelopt.torch.quantization as mtq

        if ctx.calibration is None:
            raise RuntimeError("int8 needs calibration images, and this cell has none")
        images = ctx.calibration[:CALIBRATION_SAMPLES].to("cuda")

        def forward_loop(m: torch.nn.Module) -> None:
            for start in range(0, len(images), 32):
                m(images[start:start + 32])

        with torch.no_grad():
            mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
        return model

    @staticmethod
    def _prepared(compiled: Any, ctx: PrepareContext, provider: str, size: int, cache_hit: bool,
                  max_batch: int, dtype: torch.dtype) -> TorchPrepared:
        prepared = TorchPrepared(compiled, "cuda", "fp32", provider, size, cache_hit=cache_hit, input_dtype=dtype)
        prepared.max_batch = max_batch
        return prepared

