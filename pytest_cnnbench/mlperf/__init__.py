"""MLPerf Inference scenarios (SingleStream, MultiStream, Offline, Server) through the real LoadGen.

Importing this package is cheap: no torch, no ``mlperf_loadgen``. LoadGen is imported only in the
child process that runs a test (``child.py``); ``available()`` only looks for it.

A sub-plugin (``plugin.py``): always registered, so its options parse; it acts only when
``--cnn-scenario`` is given. The core calls its ``pytest_cnnbench_cell_measured`` once per cell,
after the cell's own timing, with its prepared backend open; ``cell.py`` then runs ``run_scenarios``
(``run.py``) on the cell's preprocessed images. ``table.py`` formats the summary.
"""

from __future__ import annotations

import importlib.util
from typing import Any

SCENARIOS = ("single-stream", "multi-stream", "offline", "server")
# LoadGen's own names, as its logs and mlperf.conf spell them.
LOADGEN_NAMES = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "offline": "Offline", "server": "Server"}
INSTALL_HINT = "pip install 'pytest-cnnbench[mlperf]'"  # the extra installs mlcommons-loadgen


def available() -> bool:
    """True when MLCommons LoadGen (module ``mlperf_loadgen``) can be imported here."""
    return importlib.util.find_spec("mlperf_loadgen") is not None


def unavailable_reason() -> str:
    return f"--cnn-scenario needs MLCommons LoadGen (mlperf_loadgen), not installed; install it with: {INSTALL_HINT}"


def run_scenarios(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See ``run.run_scenarios``."""
    from .run import run_scenarios as run

    return run(*args, **kwargs)


def top1_agrees(loadgen_top1: float, plugin_top1: float, total: int) -> bool:
    """LoadGen's top-1 and the plugin's on the same ``total`` images agree: they count the same correct
    images, so they differ by less than half an image (float rounding aside)."""
    return abs(loadgen_top1 - plugin_top1) <= 0.5 / max(1, total)
