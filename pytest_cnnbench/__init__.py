"""pytest-cnnbench: CNN inference benchmarks as ordinary pytest tests.

Importing this package is cheap (no torch, ONNX Runtime or TensorRT).
"""

from .core import BuiltModel, CellSkip, CellSpec, DatasetContext, ModelContext
from .registry import register_backend, register_dataset, register_model

__version__ = "0.1.0"
__all__ = [
    "BuiltModel", "CellSkip", "CellSpec", "DatasetContext", "ModelContext",
    "register_backend", "register_dataset", "register_model", "__version__",
]
