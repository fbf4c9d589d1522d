"""TorchScript: trace, freeze, and optimize_for_inference where it pays.

The frozen archive is cached on disk; optimize_for_inference runs after loading,
because its output (with MKLDNN-prepacked constants) does not survive save/load.
optimize_for_inference speeds up large convolutions on the CPU but slows small
models (layout conversions around every op: LeNet at batch size 1 ran at half of
eager's speed with it), so both variants are compared, interleaved, and the optimized one
is kept only when it is clearly faster, as one would by hand; the provider names the
choice. The choice is remembered per machine and cell (``between_sessions.py``), so later sessions
measure the same variant.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Optional

import torch

from .. import progress
from ..cache import hash_parts
from ..configchoice import choose_configuration
from .base import THREADS_TORCH, PrepareContext, TorchPrepared, torch_dtype, torch_precision_reason


def _silence_deprecation() -> None:
    # torch >= 2.10 marks TorchScript deprecated; this backend exists to measure it anyway.
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


class TorchScriptBackend:
    name = "torchscript"
    thread_use = THREADS_TORCH  # see base.thread_use
    uses_torch_allocator = True

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if precision == "bf16":
            return ("bf16 TorchScript is not built here (torch.jit is deprecated, and its freeze/optimize_for_inference "
                    "passes target fp32 oneDNN layouts); eager, inductor and openvino run bf16")
        return torch_precision_reason("TorchScript", device, precision)

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
            frozen, path, cache_hit = ctx.cache.load_or_build(
                "torchscript", key, ".pt",
                # A file that passes its checksum yet does not load (e.g. another torch build) is rebuilt.
                lambda path: torch.jit.load(str(path), map_location=ctx.device),
                lambda: (progress.update("TorchScript trace and freeze"), self._build(module, ctx))[1],
                lambda built, tmp: torch.jit.save(built, str(tmp)))
            scripted, variant = self._fastest(frozen, ctx)
            prepared = TorchPrepared(scripted, ctx.device, ctx.precision, f"torchscript {variant} {ctx.device}",
                                     path.stat().st_size, cache_hit=cache_hit)
            prepared.artifact_id = f"torch {torch.__version__} {ctx.cache.content_id(path)} {variant}"
            prepared.artifact_path = path  # the frozen archive a deployment loads (coldstart/)
            return prepared

    def _fastest(self, frozen: torch.jit.ScriptModule, ctx: PrepareContext) -> tuple[torch.jit.ScriptModule, str]:
        """The remembered variant for this machine and cell, else both compared now (interleaved)
        and the choice remembered. "frozen" is the default: optimize_for_inference must earn its place."""
        from .. import between_sessions

        parts = (ctx.model_key, ctx.device, ctx.precision, ctx.batch_size, tuple(ctx.input_shape),
                 ctx.threads or torch.get_num_threads())
        record = between_sessions.remembered_choice(ctx.cache, "torchscript-variant", parts, ctx.reprobe)
        if record is not None and record["choice"] == "frozen":
            return frozen, "frozen"
        progress.update("TorchScript optimize_for_inference, then timing it against the frozen module")
        try:
            # optimize_for_inference rewrites the module it is given: optimize a copy.
            buffer = io.BytesIO()
            torch.jit.save(frozen, buffer)
            buffer.seek(0)
            optimized = torch.jit.optimize_for_inference(torch.jit.load(buffer, map_location=ctx.device))
        except Exception as exc:  # some graphs do not survive the pass; the frozen one still runs
            ctx.log(f"cnnbench: optimize_for_inference failed ({type(exc).__name__}: {exc}); using the frozen module")
            return frozen, "frozen"
        variants = {"frozen": frozen, "frozen+optimized": optimized}
        if record is not None and record["choice"] in variants:
            return variants[record["choice"]], record["choice"]
        example = torch.randn(ctx.batch_size, *ctx.input_shape, device=ctx.device, dtype=torch_dtype(ctx.precision))
        sync = torch.cuda.synchronize if ctx.device == "cuda" else (lambda: None)
        calls = {name: (lambda m=module: (m(example), sync())) for name, module in variants.items()}
        with torch.inference_mode():
            comparison = choose_configuration(calls)
        between_sessions.remember_choice(ctx.cache, "torchscript-variant", parts, comparison.choice, comparison.as_dict())
        return variants[comparison.choice], comparison.choice
