"""Static int8 quantization for ONNX Runtime's CPU provider.

The plugin's fp32 ONNX export goes through ``quant_pre_process`` (shape inference, graph
clean-up) and ``quantize_static``: QDQ format, per-channel symmetric int8 weights, activations
calibrated on the cell's calibration images (``--cnn-calibration`` picks MinMax, Entropy or
Percentile; ``--cnn-calibration-images`` how many). ONNX Runtime fuses the QuantizeLinear /
DequantizeLinear pairs into integer kernels (QLinearConv, QLinearAdd, QGemm) at load.

The scheme follows ONNX Runtime's guidance for the CPU it runs on, read from the CPU's flags
rather than assumed:

- x86 without VNNI (AVX2 only): u8 activations x s8 weights, weights in 7 bits
  (``reduce_range``). The AVX2 kernels multiply with ``vpmaddubsw``, which adds two
  u8 x s8 products into a saturating int16; 7-bit weights keep that sum in range.
- x86 with VNNI (``avx512_vnni`` / ``avx_vnni``): u8 x s8 with full 8-bit weights
  (``vpdpbusd`` accumulates in int32, nothing saturates).
- ARM: s8 activations x s8 weights.

The node that produces the logits (the classifier's Gemm) stays float, so the logits are not
clipped to the range seen in calibration; it is a tiny part of the work (ResNet50: 0.05%).

The quantized model is cached by the fp32 model's content, the calibration images, the method
and the scheme (and ONNX Runtime's version), like every other artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .. import progress
from ..cache import hash_parts
from .base import PrepareContext

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Calibration runs a model that outputs every intermediate tensor: keep each batch small
# (3 ImageNet images, 64 MNIST digits) and collect one batch at a time (strided), so memory
# stays bounded whatever the number of calibration images.
CALIBRATION_BATCH_VALUES = 600_000
CALIBRATION_BATCH_MAX = 64
RECIPE = "qdq per-channel, float head, strided calibration"  # in the cache key: change it when the recipe changes


HIDE_FLAGS_ENV = "CNNBENCH_HIDE_CPU_FLAGS"  # comma list of flags to treat as absent (tests: a CPU without them)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``), less any named in
    $CNNBENCH_HIDE_CPU_FLAGS."""
    hidden = {f.strip() for f in os.environ.get(HIDE_FLAGS_ENV, "").split(",") if f.strip()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split()) - hidden
    except OSError:
        pass
    return frozenset()


def has_vnni(flags: frozenset[str]) -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    activations: str  # "u8" or "s8"
    reduce_range: bool  # 7-bit weights
    why: str

    def describe(self) -> str:
        weights = "s8 per-channel weights" + (" in 7 bits (reduce_range)" if self.reduce_range else "")
        return f"QDQ static, {self.activations} activations, {weights}: {self.why}"


def scheme_for(machine: str, flags: frozenset[str]) -> QuantScheme:
    if machine.lower() in ("arm64", "aarch64"):
        return QuantScheme("s8", False, "ARM CPU")
    if has_vnni(flags):
        return QuantScheme("u8", False, "x86 with VNNI")
    isa = "AVX2" if "avx2" in flags else "x86"
    return QuantScheme("u8", True, f"{isa} without VNNI (vpmaddubsw's int16 sums must not saturate)")


def this_cpu_scheme() -> QuantScheme:
    return scheme_for(platform.machine(), cpu_flags())


def calibration_batch(images: torch.Tensor) -> int:
    per_sample = max(1, images[0].numel()) if len(images) else 1
    return max(1, min(CALIBRATION_BATCH_MAX, CALIBRATION_BATCH_VALUES // per_sample))


def _reader(images: torch.Tensor, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Calibration batches; ``set_range`` lets ONNX Runtime collect them a slice at a time."""

        def __init__(self) -> None:
            size = calibration_batch(images)
            self.batches = [images[i:i + size].float().contiguous().numpy() for i in range(0, len(images), size)]
            self.start, self.end = 0, len(self.batches)
            self.position = 0

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = start_index, min(end_index, len(self.batches))
            self.position = self.start

        def get_next(self) -> Optional[dict[str, Any]]:
            if self.position >= self.end:
                return None
            self.position += 1
            return {input_name: self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = self.start

    return Reader()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools print progress and log warnings; keep them out of test output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def output_nodes(path: Path) -> list[str]:
    """Names of the nodes that produce the model's outputs (the logits)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    outputs = {output.name for output in model.graph.output}
    return [node.name for node in model.graph.node if outputs & set(node.output)]


def quantize_onnx(source: Path, target: Path, images: torch.Tensor, method: str, scheme: QuantScheme,
                  input_name: str) -> None:
    """Write the int8 QDQ model of ``source`` to ``target``, calibrated on ``images``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(images) == 0:
        raise RuntimeError("int8 needs calibration images, and this cell has none")
    with tempfile.TemporaryDirectory(prefix="cnnbench-ort-int8-") as folder, _quiet():
        prepared = Path(folder) / "preprocessed.onnx"
        # ONNX shape inference is enough for CNNs with a dynamic batch axis (the symbolic one is for
        # sequence models and costs seconds on ResNet50).
        progress.update("ONNX Runtime quant_pre_process")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        progress.update(f"ONNX Runtime int8 calibration ({method}, {len(images)} images) and quantize_static")
        quantize_static(
            str(prepared), str(target), _reader(images, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=scheme.reduce_range,
            activation_type=QuantType.QUInt8 if scheme.activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            # The classifier head stays float: quantizing its output would clip the logits to the range
            # seen in calibration (LeNet: one test digit's -28.8 came out as -20.9).
            nodes_to_exclude=output_nodes(prepared),
            extra_options={"CalibStridedMinMax": 1},  # one batch per collection: bounded memory
        )


def quantized_model(fp32_path: Path, ctx: PrepareContext, input_name: str) -> tuple[Path, bool]:
    """The cached int8 model for this cell (built on a miss): ``(path, cache_hit)``."""
    import onnxruntime

    if ctx.calibration is None:
        raise RuntimeError("int8 needs calibration images, and this cell has none")
    scheme = this_cpu_scheme()
    key = hash_parts("ort-int8", RECIPE, fp32_path.stem, ctx.model_key, ctx.calibration_id, str(len(ctx.calibration)),
                     ctx.calibration_method, repr(scheme), onnxruntime.__version__)
    path, hit = ctx.cache.get_or_build(
        "ort-int8", key, ".onnx",
        lambda tmp: quantize_onnx(fp32_path, tmp, ctx.calibration, ctx.calibration_method, scheme, input_name))
    return path, hit
