"""OpenVINO on the CPU, from the plugin's ONNX export (the ``ort`` backend's, cached).

- fp32: ``read_model`` on the ONNX file, compiled for the CPU with the inference precision
  pinned to f32 (on CPUs with AMX or AVX512-BF16 OpenVINO would otherwise run bf16 by
  default and the row would not be fp32), a latency hint and one stream.
- int8: NNCF post-training quantization (``nncf.quantize``) calibrated on the cell's
  calibration images, the same ones ``ort`` int8 uses. ``--cnn-calibration`` picks NNCF's
  activation range estimator: minmax -> MINMAX, percentile -> MEAN_QUANTILE, entropy ->
  HISTOGRAM (NNCF has no KL-entropy calibrator; its histogram estimator is the closest).
  Without VNNI the weights of every layer get NNCF's overflow fix (7 bits), for the same
  reason as ``ort``'s reduce_range. The quantized IR (.xml + .bin) is cached by model
  content, calibration images, method and versions.
- One static shape, the cell's batch size (compiled static, as one deploys it); the accuracy
  pass feeds batches of that size, the last one padded.
- fp16 runs only where the CPU plugin reports FP16 among its optimization capabilities
  (AMX-FP16, AVX512-FP16, ARM); elsewhere it would run fp32 and the cell skips saying so.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import progress
from ..cache import hash_parts
from ..lazy import require
from .base import THREADS_AT_PREPARE, PrepareContext, bf16_reason
from .ort_quant import cpu_flags, has_vnni

HINTS = {"fp16": "f16", "bf16": "bf16"}  # INFERENCE_PRECISION_HINT by precision (else f32: no silent bf16)
RANGE_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    return require("openvino", extra="openvino").Core()


def cpu_capabilities() -> list[str]:
    return list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _ir_id(ctx: PrepareContext, xml: Path, weights: Path) -> str:
    return f"{ctx.cache.content_id(xml)} {ctx.cache.content_id(weights)}"


def _thread_settings(compiled: Any) -> dict[str, Any]:
    """What sets and places the compiled model's threads, as OpenVINO reports it (the row's thread_pinning)."""
    out: dict[str, Any] = {}
    for key in ("INFERENCE_NUM_THREADS", "ENABLE_CPU_PINNING", "SCHEDULING_CORE_TYPE", "ENABLE_HYPER_THREADING", "NUM_STREAMS"):
        try:
            out[key] = str(compiled.get_property(key))
        except Exception:  # not reported by this OpenVINO version
            out[key] = None
    return out


class OpenVinoPrepared:
    cache_hit: bool
    thread_settings: Optional[dict[str, Any]] = None  # what sets and places its threads (_thread_settings)
    artifact_id: Optional[str] = None
    calibration: Optional[str] = None
    quantization: Optional[str] = None

    def __init__(self, compiled: Any, batch_size: int, provider: str, artifact_bytes: int, cache_hit: bool) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()  # for run(); bind() makes its own
        self.max_batch = batch_size
        self.provider = provider
        self.artifact_bytes = artifact_bytes
        self.cache_hit = cache_hit

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        count, size = len(batch), self.max_batch
        array = batch.float().contiguous().numpy()
        if count < size:  # the compiled shape is static: pad the last accuracy batch
            array = np.concatenate([array, np.zeros((size - count, *array.shape[1:]), np.float32)])
        self.request.infer({0: array})
        return torch.from_numpy(self.request.get_output_tensor(0).data[:count].copy())

    def bind(self, batch: torch.Tensor) -> Callable[[], Any]:
        import openvino as ov

        # A copy of its own: a request writes into a tensor set on it (run() would overwrite the caller's images).
        array = batch.float().numpy().copy()
        request = self.compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(array, shared_memory=True))  # bound once, as ort's io binding
        infer = request.infer
        return lambda: infer(None, share_outputs=True) and array  # the bound array lives with the call

    def bind_device(self, batch: torch.Tensor) -> None:
        return None

    def close(self) -> None:
        self.request = self.compiled = None


class OpenVinoBackend:
    name = "openvino"
    thread_use = THREADS_AT_PREPARE  # see base.thread_use

    def unavailable_reason(self, device: str, precision: str) -> Optional[str]:
        try:
            require("openvino", extra="openvino")
            if precision == "int8":
                require("nncf", extra="openvino")
        except ImportError as exc:
            return str(exc)
        if device != "cpu":
            return "the openvino backend runs on the CPU (OpenVINO's GPU plugin is for Intel GPUs, not CUDA)"
        if precision == "bf16":
            reason = bf16_reason("OpenVINO", device)
            if reason:
                return reason
            if "BF16" not in cpu_capabilities():
                return (f"bf16 with OpenVINO's CPU plugin needs its BF16 capability; this CPU's capabilities are "
                        f"{', '.join(cpu_capabilities())}, so it would run fp32")
        if precision == "fp16" and "FP16" not in cpu_capabilities():
            return (f"fp16 with OpenVINO's CPU plugin needs AMX-FP16, AVX512-FP16 or ARM fp16; this CPU's capabilities "
                    f"are {', '.join(cpu_capabilities())}, so it would run fp32")
        return None

    def prepare(self, module: torch.nn.Module, ctx: PrepareContext) -> OpenVinoPrepared:
        from .ort import OrtBackend

        ov = require("openvino", extra="openvino")
        onnx_path, cache_hit = OrtBackend().export(module, ctx)
        if ctx.precision == "int8":
            model, cache_hit, size, artifact_name = self._int8_model(onnx_path, ctx)
            # The IR's .xml (its .bin beside it); artifact_name starts with its cache name, "openvino-int8/<key>".
            artifact_path = ctx.cache.path("openvino-int8", artifact_name.split()[0].split("/")[-1], ".xml")
        else:
            model, size = _core().read_model(str(onnx_path)), onnx_path.stat().st_size
            artifact_name = ctx.cache.content_id(onnx_path)
            artifact_path = onnx_path
        model.reshape({0: [ctx.batch_size, *ctx.input_shape]})
        config = {
            "INFERENCE_PRECISION_HINT": HINTS.get(ctx.precision, "f32"),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(ctx.threads or torch.get_num_threads()),
        }
        progress.update(f"OpenVINO compile_model (batch {ctx.batch_size})")
        compiled = _core().compile_model(model, "CPU", config)
        if ctx.precision == "bf16":  # what the plugin compiled for, from its runtime properties: not the hint asked for
            ran = compiled.get_property("INFERENCE_PRECISION_HINT")
            if ran != ov.Type.bf16:
                raise RuntimeError(f"OpenVINO bf16: the compiled model's INFERENCE_PRECISION_HINT is {ran}, not bf16")
        prepared = OpenVinoPrepared(compiled, ctx.batch_size, f"openvino CPU {ov.__version__.split('-')[0]}", size, cache_hit)
        prepared.artifact_path = artifact_path  # the model a deployment compiles (coldstart/)
        prepared.thread_settings = _thread_settings(compiled)
        # The compiled shape is static (the batch size) and the precision hint picks kernels: both are in the id.
        prepared.artifact_id = (f"openvino {ov.__version__} {artifact_name} {config['INFERENCE_PRECISION_HINT']} "
                                f"batch {ctx.batch_size}")
        if ctx.precision == "int8":
            prepared.calibration = f"{ctx.calibration_note}, {ctx.calibration_method} (NNCF {RANGE_ESTIMATORS[ctx.calibration_method]})"
            prepared.quantization = self._scheme()
        return prepared

    @staticmethod
    def _scheme() -> str:
        vnni = has_vnni(cpu_flags())
        return "NNCF post-training, u8 activations, s8 per-channel weights" + ("" if vnni else " in 7 bits (overflow fix: no VNNI)")

    def _int8_model(self, onnx_path: Path, ctx: PrepareContext) -> tuple[Any, bool, int, str]:
        """The NNCF-quantized IR, from the cache or built: ``(model, cache_hit, bytes, its cache name)``."""
        import nncf

        ov = require("openvino", extra="openvino")
        if ctx.calibration is None:
            raise RuntimeError("int8 needs calibration images, and this cell has none")
        key = hash_parts("openvino-int8", onnx_path.stem, ctx.model_key, ctx.calibration_id, str(len(ctx.calibration)),
                         ctx.calibration_method, self._scheme(), ov.__version__, nncf.__version__)
        # Two files under one key: the .xml entry's lock guards both, so one process quantizes.
        with ctx.cache.locked("openvino-int8", key, ".xml"):
            xml, weights = ctx.cache.lookup("openvino-int8", key, ".xml"), ctx.cache.lookup("openvino-int8", key, ".bin")
            if xml is not None and weights is not None:
                try:
                    return _core().read_model(str(xml), str(weights)), True, weights.stat().st_size, _ir_id(ctx, xml, weights)
                except Exception as exc:  # passes its checksum yet does not load (another OpenVINO)
                    ctx.cache.discard(xml, f"OpenVINO cannot read it: {type(exc).__name__}: {exc}")
            quantized = self._quantize(_core().read_model(str(onnx_path)), ctx)
            import tempfile

            with tempfile.TemporaryDirectory(prefix="cnnbench-openvino-") as folder:
                saved = Path(folder) / "model.xml"
                ov.save_model(quantized, str(saved), compress_to_fp16=False)
                # .bin first: a reader that finds the .xml finds its weights.
                weights = ctx.cache.store("openvino-int8", key, ".bin", lambda tmp: tmp.write_bytes(saved.with_suffix(".bin").read_bytes()))
                xml = ctx.cache.store("openvino-int8", key, ".xml", lambda tmp: tmp.write_bytes(saved.read_bytes()))
        return _core().read_model(str(xml), str(weights)), False, weights.stat().st_size, _ir_id(ctx, xml, weights)

    def _quantize(self, model: Any, ctx: PrepareContext) -> Any:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        images = ctx.calibration
        samples = [images[i:i + 1].float().contiguous().numpy() for i in range(len(images))]
        advanced = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.FIRST_LAYER if has_vnni(cpu_flags()) else OverflowFix.ENABLE,
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, RANGE_ESTIMATORS[ctx.calibration_method]),
        )
        progress.update(f"NNCF int8 calibration ({ctx.calibration_method}, {len(samples)} images) and quantize")
        nncf.set_log_level(40)  # errors only: NNCF reports progress bars and statistics otherwise
        return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), advanced_parameters=advanced)
