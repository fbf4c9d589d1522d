"""Import optional heavy dependencies on first use, with an install hint when missing."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Optional

_HINTS = {
    "cpu": "pip install 'pytest-cnnbench[cpu]'",
    "gpu": "pip install 'pytest-cnnbench[gpu]'",
    "plot": "pip install 'pytest-cnnbench[plot]'",
    "openvino": "pip install 'pytest-cnnbench[openvino]'",
    "timm": "pip install 'pytest-cnnbench[timm]'",
}

# Installed packages whose import failed with something other than ImportError, by module: a
# broken library does not mend itself within a run, and torch_tensorrt prints on every attempt.
_BROKEN: dict[str, str] = {}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``. ImportError with the install command when it is not installed; an
    installed package that fails to import raises its own error (see ``unavailable``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if _installed(module):
            # e.g. a dependency the package forgot to declare: installing it again will not help.
            raise ImportError(f"{module} is installed but cannot be imported ({type(exc).__name__}: {exc})") from exc
        raise ImportError(f"{module} is not installed ({exc}); install it with: {_HINTS[extra]}") from exc


def unavailable(module: str, extra: str) -> Optional[str]:
    """Why ``module`` cannot be used here, or None once it imports.

    For availability checks: besides ImportError, libraries fail to import in their own ways.
    torch_tensorrt re-raises a TensorRT load failure as a bare ``Exception``, and a torch
    build it was not compiled against makes loading its extension raise ``OSError``
    (undefined symbol). The reason is then the library's own message.
    """
    if module in _BROKEN:
        return _BROKEN[module]
    try:
        require(module, extra)
    except ImportError as exc:
        return str(exc)
    except Exception as exc:
        _BROKEN[module] = f"{module} failed to import: {type(exc).__name__}: {exc}"
        return _BROKEN[module]
    return None
