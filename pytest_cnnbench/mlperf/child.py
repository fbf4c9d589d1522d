"""One LoadGen test in a child process, its SUT served by the parent (which holds the prepared backend).

Why a child: LoadGen's sharp edges, each seen here with mlcommons-loadgen 6.0.17:
- an exception in the SUT's issue callback propagates out of ``StartTest``, and the interpreter
  then segfaults at exit;
- a sample that is never completed makes ``StartTest`` wait forever;
- a missing output folder silently writes no results (the process aborts later);
- an ``audit.config`` in the working directory silently overrides the settings;
- ``FromConfig`` reads mlperf.conf only on its first call in a process.
So the parent creates the output folder, the child passes an audit-config path that does not
exist, sets every setting in Python (``settings.py``), completes every sample (with an empty
response when the backend failed), and the parent waits for it with a deadline and kills it.

Why the parent runs the backend: a child forked after PyTorch ran its intra-op (OpenMP) threads
hangs in its first parallel region (seen here with torch 2.15 on the CPU), and a spawned child
would have to rebuild the model and its preparation. So the child runs only LoadGen: its SUT sends
each query's sample indices over a pipe, the parent's serving thread runs the prepared call on
those images and sends back the predicted classes, and the child completes the samples. The pipe
adds to LoadGen's per-query overhead; ``run.measure_overhead`` measures both together with a no-op
call, and the two timers' agreement check allows for it.

The child is forked (it never touches torch, so the parent's thread pools do not matter to it)
and imports ``mlperf_loadgen`` itself: the parent never loads LoadGen.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .. import progress
from ..timing import timed

PROGRESS_S = 5.0  # how often the progress line shows the samples answered while a LoadGen test runs

# Messages, child -> parent: ("q", ids, indices) a query; ("done", info) the test ended; ("fail", text).
# Parent -> child: ("r", ids, predictions int32 bytes or None, error text or None).


# A thread blocked in recv sleeps, and its CPU with it: waking a sleeping vCPU costs 0.3-1.5 ms here
# (no-op SUT through the pipe: p90 1.6 ms blocking, 0.15-0.19 ms polling first), more than a small
# model's whole call. So each side polls for a while before it blocks.
SPIN_S = 0.002


def _receive(conn: Any, spin_s: float = SPIN_S) -> Any:
    """``conn.recv()``, polling first for up to ``spin_s``."""
    until = time.perf_counter() + spin_s
    while time.perf_counter() < until:
        if conn.poll():
            break
    return conn.recv()


def _apply(lg: Any, values: dict[str, Any]) -> Any:
    settings = lg.TestSettings()
    for key, value in values.items():
        if key == "scenario":
            value = getattr(lg.TestScenario, value)
        elif key == "mode":
            value = getattr(lg.TestMode, value)
        setattr(settings, key, value)
    return settings


WATCHDOG_S = 0.5  # how often the child checks that its parent still lives (where prctl cannot tell it)


def die_with_parent(parent_pid: int, from_main_thread: bool) -> None:
    """End this child when the process that forked it ends, even by SIGKILL: an orphaned LoadGen
    child would run on for the scenario's length, or wait forever on a parent that cannot answer.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, but only when forked from the parent's main thread
    (the signal follows the forking *thread*). Everywhere: a thread that polls ``getppid``. The
    machine lock's descriptors are closed at fork already (``worklock``'s at-fork handler)."""
    import signal

    if from_main_thread and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl above took effect
        os._exit(4)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_S)
        os._exit(4)

    threading.Thread(target=watch, name="cnnbench-parent-watchdog", daemon=True).start()


class _ForwardingSut:
    """The child's side of the SUT: LoadGen's queries go to the parent over ``conn``; the parent's
    answers come back on the receiver thread, which completes the samples."""

    def __init__(self, lg: Any, np: Any, conn: Any, response_spin_s: float) -> None:
        self.lg, self.np, self.conn = lg, np, conn
        self.response_spin_s = response_spin_s
        self.send_lock = threading.Lock()  # LoadGen's issuing thread and the main thread both send
        self.outstanding: dict[int, bool] = {}  # sample ids sent to the parent, not yet completed
        self.outstanding_lock = threading.Lock()
        self.errors: list[str] = []
        self.keep: list[Any] = []  # response buffers stay alive until LoadGen copied them

    def send(self, message: tuple) -> bool:
        try:
            with self.send_lock:
                self.conn.send(message)
            return True
        except (OSError, EOFError, ValueError):
            return False

    def complete(self, ids: list[int], data: Optional[bytes]) -> None:
        """Complete ``ids`` with the parent's predictions (int32 bytes), or empty where there are none."""
        lg, np = self.lg, self.np
        responses = []
        buffers = []
        if data:
            array = np.frombuffer(data, dtype=np.int32)
            per = max(1, len(array) // max(1, len(ids)))
            for i, sample_id in enumerate(ids):
                buf = np.ascontiguousarray(array[i * per:(i + 1) * per])
                buffers.append(buf)
                responses.append(lg.QuerySampleResponse(sample_id, buf.ctypes.data, buf.nbytes))
        else:
            responses = [lg.QuerySampleResponse(sample_id, 0, 0) for sample_id in ids]
        with self.outstanding_lock:
            for sample_id in ids:
                self.outstanding.pop(sample_id, None)
        self.keep.append(buffers)
        lg.QuerySamplesComplete(responses)
        self.keep.clear()

    def issue(self, samples: Any) -> None:
        """LoadGen's issue callback. Never raises (LoadGen would abort the test and crash the interpreter at exit)."""
        try:
            ids = [s.id for s in samples]
            indices = [s.index for s in samples]
            with self.outstanding_lock:
                for sample_id in ids:
                    self.outstanding[sample_id] = True
            if not self.send(("q", ids, indices)):
                self.errors.append("the parent stopped serving queries")
                self.complete(ids, None)
        except Exception as exc:  # pragma: no cover - defensive
            self.errors.append(f"issue_query: {type(exc).__name__}: {exc}")
            try:
                self.complete([s.id for s in samples], None)
            except Exception:
                pass

    def receive(self) -> None:
        """The receiver thread: complete each answer until the parent stops, then whatever is left."""
        while True:
            try:
                message = _receive(self.conn, self.response_spin_s)
            except (EOFError, OSError):
                break
            if message[0] == "stop":
                break
            _, ids, data, error = message
            if error and len(self.errors) < 5:
                self.errors.append(error)
            try:
                self.complete(ids, data if not error else None)
            except Exception as exc:  # pragma: no cover
                self.errors.append(f"QuerySamplesComplete: {exc}")
        # The parent is gone or stopped: complete what is left, so StartTest returns.
        with self.outstanding_lock:
            left = list(self.outstanding)
        if left:
            self.errors.append(f"{len(left)} sample(s) never answered")
            self.complete(left, None)


def _log_settings(lg: Any, out_dir: str) -> Any:
    """LoadGen's logs into ``out_dir`` as ``mlperf_log_*``, no summary on the child's stdout, no trace."""
    log_output = lg.LogOutputSettings()
    log_output.outdir = out_dir
    log_output.prefix = "mlperf_log_"
    log_output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = log_output
    log_settings.enable_trace = False
    return log_settings


def _start_test(lg: Any, issue: Callable[[Any], None], settings_values: dict[str, Any], total: int,
                performance: int, out_dir: str) -> float:
    """Run the LoadGen test (it returns once every sample is completed); its wall-clock seconds."""
    settings = _apply(lg, settings_values)
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(total, performance, lambda indices: None, lambda indices: None)
    log_settings = _log_settings(lg, out_dir)
    no_audit = os.path.join(out_dir, "no-audit.config.absent")  # must not exist: see the module's docstring
    started = time.perf_counter()
    lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, no_audit)
    elapsed = time.perf_counter() - started
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)
    return elapsed


def child_main(conn: Any, settings_values: dict[str, Any], total: int, performance: int, out_dir: str,
               response_spin_s: float = SPIN_S, parent_pid: Optional[int] = None,
               from_main_thread: bool = False) -> None:
    """The child: run one LoadGen test whose SUT forwards queries to the parent over ``conn``.
    ``response_spin_s``: how long its receiver polls for a response before it blocks."""
    if parent_pid is not None:
        die_with_parent(parent_pid, from_main_thread)
    try:
        import numpy as np

        import mlperf_loadgen as lg
    except Exception as exc:  # pragma: no cover - the parent checks availability first
        conn.send(("fail", f"cannot import mlperf_loadgen: {exc}"))
        os._exit(3)
    sut = _ForwardingSut(lg, np, conn, response_spin_s)
    receiver = threading.Thread(target=sut.receive, name="cnnbench-loadgen-responses", daemon=True)
    receiver.start()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    os.chdir(out_dir)  # anything LoadGen writes relative to the working directory lands here
    elapsed = _start_test(lg, sut.issue, settings_values, total, performance, out_dir)
    sut.send(("done", {"errors": sut.errors, "wall_s": elapsed}))
    try:
        conn.close()
    except OSError:
        pass
    os._exit(0)  # no interpreter teardown: nothing of the parent's (torch, pytest) runs again here


class Served:
    """What the parent's serving thread saw: queries, samples, the backend's first errors."""

    def __init__(self) -> None:
        self.queries = 0
        self.samples = 0
        self.errors: list[str] = []
        self.busy_since: Optional[float] = None  # inside the backend call since (None: not in one)
        self.service_s: list[float] = []  # per query: seconds inside ``predict`` (the parent's share of the latency)


def _serve(conn: Any, predict: Callable[[list[int]], bytes], served: Served) -> None:
    while True:
        try:
            message = _receive(conn)
        except (EOFError, OSError):
            return
        if message[0] != "q":
            served.final = message  # type: ignore[attr-defined]
            return
        _, ids, indices = message
        served.queries += 1
        served.samples += len(ids)
        served.busy_since = time.monotonic()
        answer: list[Any] = [None, None]  # predictions, error

        def serve_query() -> None:
            try:
                answer[0] = predict(indices)
            except BaseException as exc:  # the backend failed: answer (empty) anyway, keep its message
                answer[1] = f"{type(exc).__name__}: {exc}".strip()

        served.service_s.append(timed(serve_query))  # the harness's timer, beside LoadGen's
        served.busy_since = None
        data, error = answer
        if error is not None and len(served.errors) < 5:
            served.errors.append(error)
        try:
            conn.send(("r", ids, data, error))
        except (OSError, ValueError, BrokenPipeError):
            return


class ChildResult:
    def __init__(self, ok: bool, message: str = "", info: Optional[dict[str, Any]] = None, served: Optional[Served] = None,
                 stuck: bool = False) -> None:
        self.ok = ok
        self.message = message
        self.info = info or {}
        self.served = served or Served()
        self.stuck = stuck  # the backend call never returned: nothing more can run on it


def run_test(predict: Callable[[list[int]], bytes], settings_values: dict[str, Any], total: int, performance: int,
             out_dir: Path, timeout_s: float, response_spin_s: float = SPIN_S) -> ChildResult:
    """Run one LoadGen test in a forked child; serve its queries here with ``predict(indices) -> int32 bytes``.
    ``response_spin_s``: how long the child polls for each response before blocking (0 for long calls,
    where polling would take a core from the backend for little gain).

    Never raises for what the SUT or LoadGen do: a backend error, a crash of the child, or a test past
    ``timeout_s`` (the child is killed) is a ``ChildResult`` with ``ok=False`` and a message."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    process = ctx.Process(target=child_main, name="cnnbench-loadgen", daemon=True,
                          args=(child_conn, settings_values, total, performance, str(out_dir), response_spin_s,
                                os.getpid(), threading.current_thread() is threading.main_thread()))
    process.start()
    child_conn.close()
    served = Served()
    server = threading.Thread(target=_serve, args=(parent_conn, predict, served), name="cnnbench-loadgen-sut",
                              daemon=True)
    server.start()
    deadline = time.monotonic() + timeout_s
    scenario = settings_values["scenario"]
    mode = " accuracy" if settings_values.get("mode") == "AccuracyOnly" else ""
    progress.update(f"LoadGen {scenario}{mode}")
    while process.is_alive() and time.monotonic() < deadline:
        process.join(min(PROGRESS_S, max(0.0, deadline - time.monotonic())))
        # From this waiting thread every few seconds: microseconds of the GIL against a run of seconds.
        progress.update(done=served.samples, detail="samples answered")
    if process.is_alive():
        process.kill()
        process.join(5)
        stuck = served.busy_since is not None
        parent_conn.close()
        what = ("the backend's call never returned" if stuck else "LoadGen did not finish")
        return ChildResult(False, f"LoadGen {settings_values['scenario']} test killed after {timeout_s:.0f} s: {what}",
                           served=served, stuck=stuck)
    server.join(5)
    final = getattr(served, "final", None)
    parent_conn.close()
    if final is None or final[0] != "done":
        detail = final[1] if final is not None else f"exit code {process.exitcode}"
        return ChildResult(False, f"LoadGen {settings_values['scenario']} test crashed ({detail})", served=served)
    info = final[1]
    if served.errors:
        return ChildResult(False, f"the backend raised inside the SUT: {served.errors[0]}", info, served)
    if info.get("errors"):
        return ChildResult(False, f"LoadGen {settings_values['scenario']} test: {info['errors'][0]}", info, served)
    return ChildResult(True, "", info, served)
