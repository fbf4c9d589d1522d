"""torch.compile with the inductor backend: PyTorch 2's compiler, the path that replaces TorchScript.

- ``torch.compile(model, mode=--cnn-inductor-mode, dynamic=False)`` with inductor's
  ``freezing`` on, the CPU inference recipe of PyTorch's own docs: weights become constants,
  so BatchNorm folds into convolutions and oneDNN gets prepacked weights (ResNet50 on this
  2-core machine: 0.62-0.75x eager's latency with freezing, about eager's without).
- Compilation happens on the first calls, inside ``prepare``: its time is the cell's
  ``prepare_s``. One static shape, the cell's batch size; the accuracy pass feeds batches of
  that size (the last one padded), so nothing recompiles after ``prepare``.
- Each preparation compiles its own function object (its own code object), so the thread
  count baked into inductor's C++ kernels (``cpp.threads``) is the one that preparation was
  asked for, and dynamo's per-code cache and recompile limit are per preparation too.
- torch's caches go under the plugin's cache folder (``<cache>/inductor``) unless
  ``TORCHINDUCTOR_CACHE_DIR`` names another: the FX graph and AOTAutograd caches, and the
  compiled C++ kernels. Frozen graphs bypass the first two (torch 2.15), so a warm compile
  still traces and lowers, but it finds its kernels compiled (LeNet: about 3 s instead of 60).
- fp32 only: int8 would be PT2E quantization (``X86InductorQuantizer``), a different
  quantizer from the ONNX ones, and CPU fp16 is not a deployment path.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import types
from typing import Callable, Optional

import torch

from .. import progress
from .base import PrepareContext, TorchPrepared, bf16_reason, check_bf16_output, parameter_bytes, torch_dtype

_compiled_functions = itertools.count()


def cxx_compiler() -> Optional[str]:
    """The C++ compiler inductor will use on the CPU, if one is installed."""
    from torch._inductor import config

    names = [os.environ.get("CXX")] + list(config.cpp.cxx)
    return next((shutil.which(name) for name in names if name and shutil.which(name)), None)


def point_caches_at(folder: str) -> str:
    """Use ``folder`` for torch's compile caches unless the user chose one (torch sets its default
    ``/tmp/torchinductor_<user>`` in the environment itself when inductor is imported)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.makedirs(folder, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        return folder
    return current


def fresh_function(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s call, as a function with a code object of its own (dynamo caches per code object)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        return module(x)

    code = call.__code__.replace(co_name=f"cnnbench_inductor_{next(_compiled_functions)}")
    return types.FunctionType(code, call.__globals__, code.co_name, call.__defaults__, call.__closure__)


class InductorPrepared(TorchPrepared):
    """A compiled static-shape callable: ``run`` feeds it whole batches of the compiled size."""

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        count, size = len(batch), self.max_batch or len(batch)
        if count < size:  # pad the last accuracy batch: another shape would recompile
            batch = torch.cat([batch, batch.new_zeros(size - count, *batch.shape[1:])])
        with torch.inference_mode():
            return self.module(batch.to(self.device, self.dtype))[:count].float().cpu()


class InductorBackend:
    name = "inductor"
    uses_torch_allocator = True

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        if precision == "bf16":
            reason = bf16_reason("inductor", device) if device == "cpu" else None
            if reason:
                return reason
        elif precision != "fp32":
            if precision == "int8":
                return ("inductor rows are fp32 or bf16 only here (int8 would need PT2E quantization with X86InductorQuantizer, "
                        "not built); use ort or openvino for int8 on the CPU")
            return "inductor rows are fp32 or bf16 only here (CPU fp16 convolutions are not a deployment path)"
        if device != "cpu":
            return "the inductor backend is measured on the CPU only here (CUDA graphs and Triton kernels are not wired)"
        if cxx_compiler() is None:
            return "inductor needs a C++ compiler on the CPU and none was found (g++ or $CXX); install one, e.g. apt-get install g++"
        return None

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> InductorPrepared:
        from torch._dynamo.utils import counters
        from torch._inductor import config

        point_caches_at(str(ctx.cache.root / "inductor"))
        # Frozen constants come from this copy, not the caller's module; bf16: the whole model cast, then compiled.
        dtype = torch_dtype(ctx.precision)
        model = copy.deepcopy(module).eval().to(dtype)
        mode = None if ctx.inductor_mode == "default" else ctx.inductor_mode
        compiled = torch.compile(fresh_function(model), mode=mode, dynamic=False)
        example = torch.randn(ctx.batch_size, *ctx.input_shape, dtype=dtype)
        hits_before = counters["inductor"]["fxgraph_cache_hit"]
        threads = ctx.threads or torch.get_num_threads()
        progress.update(f"torch.compile (inductor, mode {ctx.inductor_mode}, batch {ctx.batch_size})")
        with config.patch(freezing=True, **{"cpp.threads": threads}), torch.inference_mode():
            compiled(example)  # compiles
            output = compiled(example)  # and runs the compiled code once
        if ctx.precision == "bf16":
            check_bf16_output("inductor", output)
        prepared = InductorPrepared(compiled, "cpu", ctx.precision, f"inductor (mode {ctx.inductor_mode}, freezing)",
                                    parameter_bytes(model), cache_hit=counters["inductor"]["fxgraph_cache_hit"] > hits_before)
        prepared.max_batch = ctx.batch_size
        return prepared
