"""MLPerf Inference scenarios (SingleStream, MultiStream, Offline, Server) through the real LoadGen.

Importing this package is cheap: no torch, no ``mlperf_loadgen``. LoadGen is imported only in the
child process that runs a test (``child.py``); ``available()`` only looks for it.

The runner calls ``run_scenarios`` (see ``run.py``) once per cell, after its own timing, with the
cell's prepared backend call and its preprocessed images.
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


def failures(record: dict[str, Any]) -> list[str]:
    """The messages that fail the cell, from what ``run_scenarios`` returned."""
    return list(record.get("failures") or [])
