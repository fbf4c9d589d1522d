"""TorchScript: trace, freeze, optimize_for_inference.

The frozen archive is cached on disk; optimize_for_inference runs after loading,
because its output (with MKLDNN-prepacked constants) does not survive save/load.
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional

import torch

from ..cache import hash_parts
from .base import PrepareContext, TorchPrepared, torch_dtype


def _silence_deprecation() -> None:
    # torch >= 2.10 marks TorchScript deprecated; this backend exists to measure it anyway.
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


class TorchScriptBackend:
    name = "torchscript"

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if precision == "int8":
            return "TorchScript has no int8 inference path here; use ort or trt for int8"
        if precision == "fp16" and device != "cuda":
            return "fp16 TorchScript runs on CUDA only"
        return None

    def _build(self, module: torch.nn.Module, ctx: PrepareContext):
        model = copy.deepcopy(module).eval().to(ctx.device, torch_dtype(ctx.precision))
        example = torch.randn(ctx.batch_size, *ctx.input_shape, device=ctx.device, dtype=torch_dtype(ctx.precision))
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, example)
            return torch.jit.freeze(traced.eval())

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> TorchPrepared:
        with warnings.catch_warnings():
            _silence_deprecation()
            key = hash_parts("torchscript", ctx.model_key, ctx.device, ctx.precision, str(ctx.batch_size), torch.__version__)
            path = ctx.cache.lookup("torchscript", key, ".pt")
            if path is not None:
                try:
                    scripted = torch.jit.optimize_for_inference(torch.jit.load(str(path), map_location=ctx.device))
                    return TorchPrepared(scripted, ctx.device, ctx.precision, f"torchscript {ctx.device}", path.stat().st_size, cache_hit=True)
                except Exception as exc:  # passes the checksum yet does not load (e.g. another torch build)
                    ctx.cache.discard(path, f"does not load: {type(exc).__name__}: {exc}")
            frozen = self._build(module, ctx)
            path = ctx.cache.store("torchscript", key, ".pt", lambda tmp: torch.jit.save(frozen, str(tmp)))
            scripted = torch.jit.optimize_for_inference(frozen)
            return TorchPrepared(scripted, ctx.device, ctx.precision, f"torchscript {ctx.device}", path.stat().st_size)
