"""Eager PyTorch: the reference every other backend is compared with."""

from __future__ import annotations

import copy
from typing import Optional

import torch

from .base import PrepareContext, TorchPrepared, parameter_bytes, torch_dtype


class EagerBackend:
    name = "eager"
    uses_torch_allocator = True  # device memory is exactly torch.cuda.max_memory_allocated

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if precision == "int8":
            return "eager PyTorch has no int8 inference path here; use ort or trt for int8"
        if precision == "fp16" and device != "cuda":
            return "fp16 eager runs on CUDA only (CPU half-precision convolutions are not a deployment path)"
        return None

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> TorchPrepared:
        if ctx.device == "cpu" and ctx.precision == "fp32":
            model = module.eval()  # nothing to convert: share the caller's weights, no copy
        else:
            model = copy.deepcopy(module).eval().to(ctx.device, torch_dtype(ctx.precision))
        return TorchPrepared(model, ctx.device, ctx.precision, f"torch eager {ctx.device}", parameter_bytes(model))
