"""LoadGen's per-sample overhead here, as the cells see it: ``run.measure_overhead`` (a 1 s
SingleStream run of a no-op SUT through the pipe), N times (default 3), with the child polling for
answers (as for calls under 2 ms), and blocking with a 10 ms sleep as the call (as for longer calls).

    python scripts/loadgen_overhead.py 3
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pytest_cnnbench.mlperf import run
from pytest_cnnbench.mlperf.child import SPIN_S
from pytest_cnnbench.mlperf.settings import ScenarioOptions


def main() -> None:
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for spin, call_s in ((SPIN_S, 0.0), (0.0, 0.010)):
            run._OVERHEAD.clear()  # measured once per process otherwise
            found = run.measure_overhead(Path(tempfile.mkdtemp(prefix="cnnbench-overhead-")), ScenarioOptions(), spin, call_s)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in found.items() if k != "log_dir"}, flush=True)


if __name__ == "__main__":
    main()
