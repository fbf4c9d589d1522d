"""The child: a fresh interpreter that deploys one artifact and times each stage.

Run as ``python -m pytest_cnnbench.coldstart.child SPEC_JSON``. Only the standard library is imported
before the clock's first reading; the runtime is imported inside the timed ``import`` stage. The child
takes the machine's timing lock (exclusive) itself once it runs, like any timed section: the parent
holds none while it waits, and passes none down.
"""

from __future__ import annotations

import time

STARTED_WALL = time.time()  # first statement: the parent's spawn time to this is the interpreter start
STARTED = time.perf_counter()

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

STEADY_CALLS = 30  # after the first ten: the steady state's median over these (or STEADY_SECONDS, whichever first)
STEADY_SECONDS = 2.0


def load_loader(module: str, name: str, file: str) -> Any:
    """The loader class: by module name where importable, else from its file (a conftest's loader)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None and file:
        spec = importlib.util.spec_from_file_location(f"cnnbench_coldstart_loader_{module}", file)
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    else:
        mod = importlib.import_module(module)
    return getattr(mod, name)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, which starts afresh at exec; ``getrusage``'s
    ru_maxrss survives exec on Linux, so a child forked from a big parent would report the parent's."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def deploy(spec: dict[str, Any]) -> dict[str, Any]:
    """Every stage, timed; the figures of one run."""
    record: dict[str, Any] = {"interpreter_start_s": max(0.0, STARTED_WALL - spec["spawned_at"])}
    loader = load_loader(spec["loader_module"], spec["loader_name"], spec.get("loader_file", ""))(spec)
    started = time.perf_counter()
    loader.import_runtime()
    record["import_s"] = time.perf_counter() - started
    started = time.perf_counter()
    loader.load()
    record["load_s"] = time.perf_counter() - started
    loader.prepare_input()  # untimed: a service gets its input from the request
    calls = []
    for _ in range(10):
        started = time.perf_counter()
        loader.infer()
        calls.append(time.perf_counter() - started)
    record["first_inference_ms"] = calls[0] * 1e3
    record["first10_ms"] = sum(calls) * 1e3
    steady, until = [], time.perf_counter() + STEADY_SECONDS
    while len(steady) < STEADY_CALLS and (len(steady) < 3 or time.perf_counter() < until):
        started = time.perf_counter()
        loader.infer()
        steady.append(time.perf_counter() - started)
    record["steady_p50_ms"] = statistics.median(steady) * 1e3
    record["steady_calls"] = len(steady)
    record.update(loader.cache_report())
    record["peak_rss_mb"] = peak_rss_mb()
    record["since_start_s"] = time.perf_counter() - STARTED
    return record


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    from pytest_cnnbench.worklock import for_device  # standard library only

    waiting = time.perf_counter()
    with for_device(spec.get("device", "cpu"), spec.get("device_index", 0)).exclusive():
        waited = time.perf_counter() - waiting  # another worker's timed section, or its heavy work
        record = deploy(spec)
    record["lock_wait_s"] = waited
    from pytest_cnnbench.coldstart import RESULT_MARKER

    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
