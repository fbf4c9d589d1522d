"""Built-in backends, one module each behind the protocol in ``base``.

Registration is cheap: each factory imports its module (and torch, ONNX Runtime or
TensorRT) only when a cell actually runs.
"""

from __future__ import annotations

from ..registry import register_backend


@register_backend("eager", description="PyTorch eager mode under torch.inference_mode()")
def eager():
    from .eager import EagerBackend

    return EagerBackend()


@register_backend("torchscript", description="torch.jit.trace + freeze + optimize_for_inference")
def torchscript():
    from .torchscript import TorchScriptBackend

    return TorchScriptBackend()


@register_backend("ort", description="ONNX Runtime (torch.onnx export, dynamic batch, full graph optimization)")
def ort():
    from .ort import OrtBackend

    return OrtBackend()


@register_backend("ort-trt", description="ONNX Runtime with TensorRT's execution provider (CUDA GPUs only)")
def ort_trt():
    from .ort import OrtTensorrtBackend

    return OrtTensorrtBackend()


@register_backend("trt", description="TensorRT through torch-tensorrt (CUDA GPUs only)")
def trt():
    from .trt import TrtBackend

    return TrtBackend()


@register_backend("inductor", description="torch.compile with inductor (freezing on, --cnn-inductor-mode), fp32 on the CPU")
def inductor():
    from .inductor import InductorBackend

    return InductorBackend()


@register_backend("openvino", description="OpenVINO on the CPU from the ONNX export; int8 by NNCF post-training quantization")
def openvino():
    from .openvino import OpenVinoBackend

    return OpenVinoBackend()
