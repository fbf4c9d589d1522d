"""TensorRT through torch-tensorrt's dynamo path. Needs a CUDA GPU; skips cleanly without one."""

from __future__ import annotations

from typing import Optional

import torch

from ..lazy import require
from .base import PrepareContext, TorchPrepared, parameter_bytes


class TrtBackend:
    name = "trt"

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if device != "cuda":
            if not torch.cuda.is_available():
                return "TensorRT needs a CUDA GPU and none is available (torch.cuda.is_available() is False)"
            return "TensorRT runs on CUDA devices only (--cnn-device=cpu was given)"
        try:
            require("torch_tensorrt", extra="gpu")
        except ImportError as exc:
            return str(exc)
        if precision == "int8":
            return "int8 TensorRT needs calibration, which is not implemented yet"
        return None

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> TorchPrepared:
        torch_tensorrt = require("torch_tensorrt", extra="gpu")
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[ctx.precision]
        model = module.eval().to(ctx.device)
        inputs = [torch_tensorrt.Input(shape=(ctx.batch_size, *ctx.input_shape), dtype=torch.float32)]
        compiled = torch_tensorrt.compile(model, ir="dynamo", inputs=inputs, enabled_precisions={dtype})
        prepared = TorchPrepared(compiled, ctx.device, "fp32", f"tensorrt {torch.cuda.get_device_name()}", parameter_bytes(module))
        return prepared
