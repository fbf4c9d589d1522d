"""TensorRT through torch-tensorrt's dynamo path (torch-tensorrt 2.14). CUDA GPUs only; skips cleanly elsewhere.

- The module is exported here (``trt_export``: example batch of at least 2, batch axis
  dynamic from 1 to the profile's max) and the ExportedProgram is handed to
  ``torch_tensorrt.dynamo.compile``. torch-tensorrt's own tracing would export with the
  profile's opt batch, and torch.export specializes a batch of 1 to a constant.
- Precision comes from types: torch-tensorrt 2.14 always builds strongly typed networks
  (``enabled_precisions`` and ``use_explicit_typing`` are no longer parameters of
  ``dynamo.compile``; it swallows them). fp16 (bf16): the module and its input are half (bf16, on GPUs of
  compute capability 8.0 or later). fp32:
  ``disable_tf32=True``, as TensorRT would otherwise run fp32 layers in TF32.
- int8: post-training quantization with NVIDIA ModelOpt (quantize/dequantize nodes, the
  path torch-tensorrt documents for the dynamo frontend), calibrated on real images of the
  dataset in use; layers left unquantized run in fp32 (TF32 off).
- Engines are cached (``torch_tensorrt.save`` as an ExportedProgram, ``.pt2``, with the
  same dynamic batch axis) by model content, precision, batch profile, GPU name and the
  TensorRT / torch-tensorrt versions; a cached engine is used only once it has run the
  profile's smallest and largest batch, else it is discarded and rebuilt. The build time of
  this run is the cell's prepare time.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Optional

import torch

from .. import progress
from ..cache import hash_parts
from ..environment import package_version
from ..lazy import require, unavailable
from .base import PrepareContext, TorchPrepared, bf16_reason, parameter_bytes
from .trt_export import (SUFFIX, batch_dynamic_shapes, batch_range_problem, example_input, export_dynamic_batch,
                         load_validated, save_pt2)

CALIBRATION_SAMPLES = 512
MIN_ACCURACY_MAX_BATCH = 64  # the profile's max batch: the accuracy pass runs in batches of up to this
EXPORT_SCHEME = "torch.export dynamic batch, dynamo.compile, pt2"  # part of the cache key

# What each precision computes (``result["math"]``).
MATH = {
    "fp32": "fp32, TF32 off",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8 Q/DQ (ModelOpt) + fp32, TF32 off",
}


def _tensorrt_versions() -> str:
    return f"tensorrt {package_version('tensorrt')} torch-tensorrt {package_version('torch-tensorrt')}"


def profile_max_batch(batch_size: int) -> int:
    return max(batch_size, MIN_ACCURACY_MAX_BATCH)


class TrtBackend:
    name = "trt"
    device_events = True  # its DeviceCall runs on PyTorch's current stream: timed with CUDA events too

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
        if precision == "bf16":  # strongly typed: the module and its input cast to bf16, as for fp16
            reason = bf16_reason("TensorRT", device)
            if reason:
                return reason
        if precision == "int8":
            reason = unavailable("modelopt.torch.quantization", extra="gpu")
            if reason:
                return f"int8 TensorRT needs NVIDIA ModelOpt for calibration: {reason}"
        return None

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> TorchPrepared:
        torch_tensorrt = require("torch_tensorrt", extra="gpu")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ctx.precision, torch.float32)
        max_batch = profile_max_batch(ctx.batch_size)
        gpu = torch.cuda.get_device_name()
        key = hash_parts("trt", EXPORT_SCHEME, ctx.model_key, ctx.precision, f"{ctx.batch_size}/{max_batch}",
                         gpu, _tensorrt_versions(), ctx.calibration_id)
        provider = f"tensorrt ({gpu})"

        def accepts_profile(loaded: Any) -> Optional[str]:
            return batch_range_problem(loaded, ctx.input_shape, (1, max_batch), "cuda", dtype)

        # Under the entry's lock: one process builds the engine, the others wait and load it.
        with ctx.cache.locked("trt", key, SUFFIX):
            found = load_validated(ctx.cache, "trt", key, SUFFIX, lambda path: torch_tensorrt.load(str(path)).module(),
                                   accepts_profile)
            if found is not None:
                compiled, path = found
                prepared = self._prepared(compiled, ctx, provider, path.stat().st_size, True, max_batch, dtype)
                prepared.artifact_path = path  # the saved program with its engines, as a deployment loads it (coldstart/)
                return prepared

            model = copy.deepcopy(module).eval().to("cuda", dtype)
            export_mode: Any = contextlib.nullcontext()
            if ctx.precision == "int8":
                model = self._quantize_int8(model, ctx)
                from modelopt.torch.quantization.utils import export_torch_mode

                export_mode = export_torch_mode()  # lets torch.export trace ModelOpt's quantize/dequantize nodes
            profile = torch_tensorrt.Input(
                min_shape=(1, *ctx.input_shape), opt_shape=(ctx.batch_size, *ctx.input_shape),
                max_shape=(max_batch, *ctx.input_shape), dtype=dtype,
            )
            progress.update(f"TensorRT: torch.export and engine build (batch 1..{max_batch})")
            with export_mode:
                program = export_dynamic_batch(model, ctx.input_shape, max_batch, "cuda", dtype, opt_batch=ctx.batch_size)
                compiled = torch_tensorrt.dynamo.compile(program, arg_inputs=[profile], disable_tf32=True)
            size = parameter_bytes(module)
            example = example_input(ctx.input_shape, max_batch, "cuda", dtype, opt_batch=ctx.batch_size)

            def save(path: str) -> None:
                torch_tensorrt.save(compiled, path, output_format="exported_program", arg_inputs=[example],
                                    dynamic_shapes=batch_dynamic_shapes(max_batch))

            path = None
            try:
                path = ctx.cache.store("trt", key, SUFFIX, lambda tmp: save_pt2(save, tmp))
                size = path.stat().st_size
            except Exception as exc:  # the engine still runs; it is rebuilt next run
                warnings.warn(f"cnnbench: TensorRT engine not cached ({type(exc).__name__}: {exc})")
            prepared = self._prepared(compiled, ctx, provider, size, False, max_batch, dtype)
            prepared.artifact_path = path  # None when it could not be saved: then no deployable artifact (coldstart/)
            return prepared

    @staticmethod
    def _quantize_int8(model: torch.nn.Module, ctx: PrepareContext) -> torch.nn.Module:
        progress.update("ModelOpt int8 calibration")
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
        prepared = TorchPrepared(compiled, "cuda", "fp32", provider, size, cache_hit=cache_hit, input_dtype=dtype,
                                 math=MATH[ctx.precision])
        prepared.max_batch = max_batch
        return prepared
