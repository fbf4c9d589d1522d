"""ONNX Runtime: export once with torch.onnx (dynamic batch axis), cache by model content."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..cache import hash_parts
from ..lazy import require
from .base import PrepareContext

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def physical_cores() -> int:
    """ONNX Runtime is fastest with one intra-op thread per physical core (SMT siblings hurt)."""
    try:
        siblings = set()
        for cpu in os.listdir("/sys/devices/system/cpu"):
            path = Path("/sys/devices/system/cpu", cpu, "topology", "thread_siblings_list")
            if cpu.startswith("cpu") and path.exists():
                siblings.add(path.read_text().strip())
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(len(siblings) or allowed, allowed))
    except OSError:
        return os.cpu_count() or 1


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
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


class OrtPrepared:
    def __init__(self, session: Any, provider: str, artifact_bytes: int, cache_hit: bool) -> None:
        self.session = session
        self.provider = provider
        self.artifact_bytes = artifact_bytes
        self.cache_hit = cache_hit

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.float().contiguous().numpy()})
        return torch.from_numpy(logits)

    def bind(self, batch: torch.Tensor) -> Callable[[], Any]:
        feed = {INPUT_NAME: batch.float().contiguous().numpy()}
        run, outputs = self.session.run, [OUTPUT_NAME]
        return lambda: run(outputs, feed)

    def close(self) -> None:
        self.session = None


class OrtBackend:
    name = "ort"

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        try:
            ort = require("onnxruntime", extra="cpu")
        except ImportError as exc:
            return str(exc)
        if precision != "fp32":
            return f"{precision} is not implemented for the ort backend yet"
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            return f"ONNX Runtime here has no {provider} (available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
        return None

    def session_options(self) -> Any:
        ort = require("onnxruntime", extra="cpu")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = physical_cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        return options

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> OrtPrepared:
        ort = require("onnxruntime", extra="cpu")
        key = hash_parts("onnx", ctx.model_key, str(OPSET), torch.__version__)
        path, cache_hit = ctx.cache.get_or_build("onnx", key, ".onnx", lambda tmp: export_onnx(module, ctx.input_shape, tmp))
        wanted = PROVIDERS[ctx.device]
        try:
            session = ort.InferenceSession(str(path), sess_options=self.session_options(), providers=[wanted])
        except Exception as exc:
            if not cache_hit:
                raise
            # A cached file that passes its checksum but does not load: rebuild once.
            ctx.cache.discard(path, f"ONNX Runtime cannot load it: {type(exc).__name__}: {exc}")
            path, cache_hit = ctx.cache.get_or_build("onnx", key, ".onnx", lambda tmp: export_onnx(module, ctx.input_shape, tmp))
            session = ort.InferenceSession(str(path), sess_options=self.session_options(), providers=[wanted])
        active = session.get_providers()
        if active[0] != wanted:
            # ONNX Runtime falls back to the CPU silently; CPU figures must never pass as GPU ones.
            raise RuntimeError(f"ONNX Runtime fell back to {active[0]} instead of {wanted}")
        return OrtPrepared(session, active[0], path.stat().st_size, cache_hit)
