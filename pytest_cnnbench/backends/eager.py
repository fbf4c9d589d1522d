"""Eager PyTorch: the reference every other backend is compared with."""

from __future__ import annotations

import copy
from typing import Optional

import torch

from .base import (THREADS_TORCH, PrepareContext, TorchPrepared, bf16_reason, check_bf16_output, parameter_bytes,
                   torch_dtype, torch_precision_reason)


class EagerBackend:
    name = "eager"
    thread_use = THREADS_TORCH  # see base.thread_use
    uses_torch_allocator = True  # device memory is exactly torch.cuda.max_memory_allocated

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if precision == "bf16":
            return bf16_reason("eager", device)
        return torch_precision_reason("eager", device, precision)

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> TorchPrepared:
        if ctx.device == "cpu" and ctx.precision == "fp32":
            model = module.eval()  # nothing to convert: share the caller's weights, no copy
        else:
            model = copy.deepcopy(module).eval().to(ctx.device, torch_dtype(ctx.precision))
        if ctx.precision == "bf16":  # the whole model cast, as deployed; check that bf16 is what runs
            with torch.inference_mode():
                check_bf16_output("eager", model(torch.zeros(1, *ctx.input_shape, device=ctx.device, dtype=torch.bfloat16)))
        return TorchPrepared(model, ctx.device, ctx.precision, f"torch eager {ctx.device}", parameter_bytes(model))
