"""Import optional heavy dependencies on first use, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

_HINTS = {
    "cpu": "pip install 'pytest-cnnbench[cpu]'",
    "gpu": "pip install 'pytest-cnnbench[gpu]'",
    "plot": "pip install 'pytest-cnnbench[plot]'",
    "openvino": "pip install 'pytest-cnnbench[openvino]'",
}


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed ({exc}); install it with: {_HINTS[extra]}") from exc
