"""``run_scenarios``: every selected LoadGen scenario for one cell, plus LoadGen's accuracy pass.

Called by ``cell.py`` after the cell's own timing, with the prepared backend still open.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import time

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import top1_agrees, unavailable_reason
from .child import SPIN_S, ChildResult, run_test
from .log import ACCURACY, LogError, read_detail, summarize
from .settings import Hints, ScenarioHints, ScenarioOptions, latency_bound_ms, loadgen_settings, timeout_for

_OVERHEAD: dict[tuple, dict[str, Any]] = {}  # by (child's polling, call length): once per process (``measure_overhead``)
OVERHEAD_SECONDS = 1.0


def _predictor(call: Callable[[Any], Any], images: Any, batch_size: int) -> Callable[[list[int]], bytes]:
    """``indices -> predicted classes as int32 bytes``, running ``call`` in batches of ``batch_size``.
    Runs in the parent's serving thread, under torch.inference_mode (it is per thread)."""
    import numpy as np
    import torch

    def predict(indices: list[int]) -> bytes:
        out = []
        with torch.inference_mode():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                if len(chunk) == 1:
                    batch = images[chunk[0]:chunk[0] + 1]
                else:
                    batch = images[torch.as_tensor(chunk)]
                logits = call(batch)
                out.append(torch.as_tensor(logits).reshape(len(chunk), -1).argmax(dim=1).to(torch.int32).cpu().numpy())
        return np.concatenate(out).astype(np.int32).tobytes()

    return predict


def _noop_call(batch: Any) -> Any:
    import torch

    return torch.zeros(len(batch), 1)


# A p90 from one cell's timing is known less well than its p50 (its stated spread); between the two
# runs the machine's pace also moves. The agreement check allows at least this fraction of the p90.
P90_SPREAD_FLOOR = 0.10
# The SUT's own call on single samples, timed back to back by the harness's timer before LoadGen runs:
# at least this many calls, and more up to this many seconds.
SERVING_MIN_CALLS, SERVING_MAX_CALLS, SERVING_SECONDS = 30, 500, 1.0


def _nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by nearest rank (as LoadGen reports its percentiles)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serving_p90(predict: Callable[[list[int]], bytes], total: int, per_call_s: float) -> float:
    """p90 seconds of ``predict([i])``, the very call LoadGen's SingleStream queries run, timed back to
    back with ``timing.timed`` over successive samples. It differs from the cell's timed call by what
    serving adds (a fresh input per query, its output reduced to a class): 0.07 ms for LeNet here."""
    from ..timing import timed

    calls = int(min(SERVING_MAX_CALLS, max(SERVING_MIN_CALLS, SERVING_SECONDS / max(per_call_s, 1e-6))))
    for index in range(min(5, total)):  # warm-up
        predict([index])
    return _nearest_rank([timed(lambda: predict([index % total])) for index in range(calls)], 0.9)


def response_spin(hints: Hints) -> float:
    """How long the child polls for each response: long enough for a fast call; not at all for a slow one,
    where a polling child would take a core from the backend and the wake-up is a small part."""
    return SPIN_S if float(ScenarioHints.of(hints).p50_s or 0.0) < SPIN_S else 0.0


def _sleeping_call(seconds: float) -> Callable[[Any], Any]:
    def call(batch: Any) -> Any:
        time.sleep(seconds)
        return _noop_call(batch)

    return call


def measure_overhead(out_dir: Path, options: ScenarioOptions, response_spin_s: float = SPIN_S,
                     call_s: float = 0.0) -> dict[str, Any]:
    """LoadGen's per-sample overhead here, as a cell sees it: a SingleStream run through the same pipe,
    slicing and argmax as a cell's, whose call is a no-op, or with ``call_s`` a sleep that long.

    The child polls for answers to fast calls (``response_spin_s``); for longer ones it blocks, and a
    vCPU that halted for a whole call wakes slowly (1-1.5 ms here, which a no-op's brief wait does not
    show): so those cells' overhead is measured with a sleep of their call's length, and is LoadGen's
    figure less the harness's own for the sleep in the same queries. Measured once per process for
    each (polling, call length)."""
    key = (response_spin_s, round(call_s, 4))
    if key in _OVERHEAD:
        return _OVERHEAD[key]
    short = ScenarioOptions(seconds=OVERHEAD_SECONDS)
    values = loadgen_settings("single-stream", short, ScenarioHints(p50_s=max(call_s, 50e-6)), samples=64)
    values["min_query_count"] = 256 if not call_s else 64
    name = "overhead" if response_spin_s else "overhead-child-blocking"
    folder = Path(out_dir) / (name if not call_s else f"{name}-{call_s * 1000:.3g}ms-call")
    import torch

    call = _sleeping_call(call_s) if call_s else _noop_call
    timeout = 60.0 + 3 * values["min_query_count"] * call_s
    result = run_test(_predictor(call, torch.zeros(64, 1), 1), values, 64, 64, folder, timeout, response_spin_s)
    record: dict[str, Any] = {"log_dir": str(folder), "child_polls": bool(response_spin_s), "call_ms": call_s * 1000.0}
    if result.ok:
        try:
            records = read_detail(folder)
            service = result.served.service_s if call_s else []  # a no-op's own time is left in
            less = {name: 1000.0 * value for name, value in
                    (("p50", _nearest_rank(service, 0.5)), ("p90", _nearest_rank(service, 0.9)),
                     ("mean", statistics.fmean(service)))} if service else {"p50": 0.0, "p90": 0.0, "mean": 0.0}
            record.update(p50_ms=float(records["result_50.00_percentile_latency_ns"]) / 1e6 - less["p50"],
                          p90_ms=float(records["result_90.00_percentile_latency_ns"]) / 1e6 - less["p90"],
                          mean_ms=float(records["result_mean_latency_ns"]) / 1e6 - less["mean"],
                          queries=int(records["result_query_count"]))
        except (LogError, KeyError, ValueError) as exc:
            record["error"] = str(exc)
    else:
        record["error"] = result.message
    _OVERHEAD[key] = record
    return record


def _run_one(scenario: str, predict: Callable[[list[int]], bytes], values: dict[str, Any], total: int, hints: ScenarioHints,
             folder: Path, options: ScenarioOptions) -> tuple[ChildResult, Optional[dict[str, Any]], Optional[str]]:
    performance = values["performance_sample_count_override"] or total
    result = run_test(predict, values, total, performance, folder, timeout_for(values, hints, total, options),
                      response_spin(hints))
    if not result.ok:
        return result, None, result.message
    try:
        entry = summarize(scenario, read_detail(folder))
    except LogError as exc:
        return result, None, str(exc)
    if entry.get("duration_s") is None:
        entry["duration_s"] = round(float(result.info.get("wall_s", 0.0)), 3)
    if result.served.service_s:  # the parent's share: the backend call and its argmax, as LoadGen's queries saw them
        entry["sut_p90_ms"] = round(_nearest_rank(result.served.service_s, 0.9) * 1000.0, 4)
    entry["submission_length"] = bool(options.official)
    entry["log_dir"] = str(folder)
    return result, entry, None


def _server(predict: Callable[[list[int]], bytes], total: int, hints: ScenarioHints, out_dir: Path,
            options: ScenarioOptions, bound_ms: float) -> tuple[Optional[dict[str, Any]], Optional[str], bool]:
    """The server scenario at --cnn-server-qps, or the highest rate that is VALID under the bound,
    by a bounded bisection between 0 and the cell's single-worker capacity (1 / (p50 + overhead), x1.2).
    Returns (entry, error, stuck)."""
    # Server queries are single samples, served one at a time: a call at the cell's batch size bounds
    # one sample's time from above; LoadGen's and the pipe's overhead adds to each.
    per_sample = max(float(hints.p50_s or 1e-3), 1e-6) + float(hints.overhead_s or 0.0)
    if options.server_qps is not None:
        rates = [options.server_qps]
    else:
        rates = []
    tried: list[dict[str, Any]] = []
    low, high = 0.0, 1.2 / per_sample
    best: Optional[dict[str, Any]] = None
    steps = 1 if rates else max(1, options.server_search_steps)
    own_p90_ms = float(hints.p90_s or 0.0) * 1000.0
    if not rates and own_p90_ms > bound_ms:
        # One call already takes longer than the bound: no rate can meet it, and each lower rate tried
        # would take longer (459 queries at least). One run at half the capacity records LoadGen's verdict.
        steps = 1
    for step in range(steps):
        qps = rates[0] if rates else (0.5 / per_sample if step == 0 else (low + high) / 2)
        qps = float(f"{qps:.4g}")
        values = loadgen_settings("server", options, hints, server_qps=qps, latency_ms=bound_ms, samples=total)
        folder = out_dir / (f"server-{qps:g}qps" if not rates else "server")
        result, entry, error = _run_one("server", predict, values, total, hints, folder, options)
        if error is not None:
            return None, error, result.stuck
        assert entry is not None
        entry["target_qps"] = qps
        entry["latency_bound_ms"] = bound_ms
        tried.append({"target_qps": qps, "loadgen": entry["loadgen"], "p99_ms": entry["p99_ms"]})
        valid = entry["loadgen"] == "VALID"
        if valid:
            low = qps
        else:
            high = qps
        # The highest VALID rate; while none is VALID, the lowest rate tried.
        if (best is None or (valid and (best["loadgen"] != "VALID" or qps > best["target_qps"]))
                or (not valid and best["loadgen"] != "VALID" and qps < best["target_qps"])):
            best = entry
    assert best is not None
    best["search"] = None if rates else {"tried": tried, "steps": steps,
                                         "note": ("one call's p90 exceeds the bound: not searched further"
                                                  if steps == 1 and options.server_search_steps > 1 else None)}
    return best, None, False


def run_scenarios(call: Callable[[Any], Any], images: Any, labels: Any, batch_size: int, scenarios: Sequence[str],
                  options: ScenarioOptions, out_dir: Path, hints: Hints) -> dict[str, Any]:
    """Run ``scenarios`` (names from ``SCENARIOS``) on one cell through LoadGen, then LoadGen's accuracy pass.

    ``call(batch) -> logits`` is the cell's prepared backend; ``images`` its preprocessed dataset (the
    QSL, staged in memory), ``labels`` their classes (or None). ``hints`` (``ScenarioHints``, or a
    mapping of its names): ``p50_s``/``p90_s`` the cell's own latency per call at ``batch_size``
    (seconds), ``spread`` its stated relative spread, ``top1`` the plugin's top-1 on the same images
    (None: not checked), ``model`` the model's name (for mlperf.conf's server bound). LoadGen logs go to ``out_dir/<scenario>/`` (emptied first).

    Returns ``{"scenarios": {name: entry}, "accuracy": {...}, "overhead": {...}, "failures": [...],
    "skip": reason or None, "notes": [...]}``. Never raises for the backend's or LoadGen's failures:
    they are ``failures`` (the cell fails with them) and the scenario's entry has ``error``."""
    out: dict[str, Any] = {"scenarios": {}, "accuracy": None, "overhead": None, "failures": [], "skip": None, "notes": []}
    if not scenarios:
        return out
    from .. import mlperf as package  # looked up now: a conftest may stand in for a missing LoadGen

    if not package.available():
        out["skip"] = unavailable_reason()
        return out
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # logs of an earlier run of this cell would mislead
    out_dir.mkdir(parents=True)
    hints = dataclasses.replace(ScenarioHints.of(hints), batch_size=batch_size)
    total = int(len(images))
    predict = _predictor(call, images, batch_size)
    hints, out["overhead"] = _with_overhead(hints, out_dir, options)
    if "single-stream" in scenarios and batch_size == 1 and hints.p90_s is not None:
        hints = _with_serving_p90(hints, predict, total)
    stuck = _run_each(scenarios, predict, total, hints, out_dir, options, out)
    if not stuck and labels is not None and hints.top1 is not None:
        _accuracy(predict, labels, total, hints, out_dir / "accuracy", options, out)
    return out


def _with_overhead(hints: ScenarioHints, out_dir: Path, options: ScenarioOptions) -> tuple[ScenarioHints, dict[str, Any]]:
    """``hints`` with LoadGen's measured per-sample overhead (``overhead_s``), and that measurement's record."""
    # The child polls for answers to fast calls only, and a blocked child's wake-up adds to each query:
    # the overhead that applies is the one measured the way this cell's child will wait.
    spin = response_spin(hints)
    call_s = 0.0 if spin else float(hints.p50_s or 0.0)
    overhead = dict(measure_overhead(out_dir.parent, options, spin, call_s))
    return dataclasses.replace(hints, overhead_s=float(overhead.get("p50_ms") or 0.0) / 1000.0), overhead


def _with_serving_p90(hints: ScenarioHints, predict: Callable[[list[int]], bytes], total: int) -> ScenarioHints:
    """``hints`` with the SUT's call timed back to back (``serving_p90_s``, shown beside the p90 check)."""
    try:
        return dataclasses.replace(hints, serving_p90_s=serving_p90(predict, total, float(hints.p50_s or 1e-3)))
    except Exception:  # the backend fails on its first call: LoadGen's run says so, with its message
        return dataclasses.replace(hints, serving_p90_s=None)


def _run_each(scenarios: Sequence[str], predict: Callable[[list[int]], bytes], total: int, hints: ScenarioHints,
              out_dir: Path, options: ScenarioOptions, out: dict[str, Any]) -> bool:
    """Each scenario in turn, its entry (or error, or skip) into ``out``. Returns whether the backend's
    call got stuck: then nothing more can run on it, and the scenarios left are recorded as not run."""
    stuck = False
    for scenario in scenarios:
        if stuck:
            out["scenarios"][scenario] = {"error": "not run: the backend's call never returned in an earlier test"}
            continue
        folder = out_dir / scenario
        if scenario == "server":
            bound = _server_bound(options, hints, out)
            if bound is None:
                continue
            entry, error, stuck = _server(predict, total, hints, out_dir, options, bound)
        else:
            values = loadgen_settings(scenario, options, hints, samples=total)
            result, entry, error = _run_one(scenario, predict, values, total, hints, folder, options)
            stuck = result.stuck
        if error is not None:
            out["scenarios"][scenario] = {"error": error, "log_dir": str(folder)}
            out["failures"].append(f"{scenario}: {error}")
            continue
        assert entry is not None
        out["scenarios"][scenario] = entry
        if scenario == "single-stream":
            _check_p90(entry, hints, out["overhead"], hints.batch_size, out)
    return stuck


def _server_bound(options: ScenarioOptions, hints: ScenarioHints, out: dict[str, Any]) -> Optional[float]:
    """The server scenario's latency bound in ms; None, with the skip recorded in ``out``, where there is none."""
    bound = latency_bound_ms(options, str(hints.model or ""))
    if bound is None:
        reason = (f"no latency bound for model {hints.model!r} (mlperf.conf has one for resnet50 only); "
                  "give --cnn-server-latency-ms")
        out["scenarios"]["server"] = {"skipped": reason}
        out["notes"].append(f"server: skipped: {reason}")
    return bound


def _check_p90(entry: dict[str, Any], hints: Hints, overhead: dict[str, Any], batch_size: int,
               out: dict[str, Any]) -> None:
    """Two independent timers on the same queries: LoadGen's SingleStream p90 (issue to completion) and
    the harness's p90 of the SUT's call inside those queries (``sut_p90_ms``, ``timing.timed`` in the
    serving thread). LoadGen's may exceed it by no more than the stated spread plus LoadGen's measured
    per-sample overhead (a no-op SUT through the same pipe), and may not fall below it by more than the
    spread: either is a bug in one of the two timers.

    Beside them, for the reader, what separates LoadGen's p90 from the table's: the cell's timed p90
    (``plugin_p90_ms``), the same SUT call timed back to back (``serving_p90_ms``: a fresh input per
    query and its output reduced to a class), then inside LoadGen's run (``sut_p90_ms``)."""
    hints = ScenarioHints.of(hints)
    plugin_p90 = hints.p90_s
    inside = entry.get("sut_p90_ms")
    if plugin_p90 is None or inside is None or batch_size != 1:
        entry["p90_agreement"] = None
        if batch_size != 1:
            out["notes"].append(f"single-stream p90 not compared: the plugin timed batches of {batch_size}, "
                                "LoadGen single samples")
        return
    plugin_ms, inside_ms = float(plugin_p90) * 1000.0, float(inside)
    serving = hints.serving_p90_s
    stated = float(hints.spread or 0.0)
    spread = max(stated, P90_SPREAD_FLOOR)
    overhead_ms = float(overhead.get("p90_ms") or 0.0)
    above, below = spread * inside_ms + overhead_ms, spread * inside_ms
    diff = entry["p90_ms"] - inside_ms
    entry["p90_agreement"] = {"sut_p90_ms": round(inside_ms, 4), "difference_ms": round(diff, 4),
                              "allowed_ms": [round(-below, 4), round(above, 4)], "spread": spread,
                              "stated_spread": stated, "overhead_ms": overhead_ms, "agrees": -below <= diff <= above,
                              "plugin_p90_ms": round(plugin_ms, 4),
                              "serving_p90_ms": round(float(serving) * 1000.0, 4) if serving is not None else None}
    if not entry["p90_agreement"]["agrees"]:
        out["failures"].append(
            f"single-stream: LoadGen's p90 {entry['p90_ms']:.3f} ms and the harness's p90 {inside_ms:.3f} ms of the "
            f"SUT's call in the same queries differ by {diff:+.3f} ms, outside -{below:.3f} to +{above:.3f} ms (the spread "
            f"±{spread:.1%}, stated ±{stated:.1%} and at least ±{P90_SPREAD_FLOOR:.0%}, plus LoadGen's overhead "
            f"{overhead_ms:.3f} ms above): a bug in one of the two timers")


def _accuracy(predict: Callable[[list[int]], bytes], labels: Any, total: int, hints: ScenarioHints, folder: Path,
              options: ScenarioOptions, out: dict[str, Any]) -> None:
    from .accuracy import AccuracyLogError, top1_from_log

    values = loadgen_settings("offline", options, hints, accuracy=True, samples=total)
    result = run_test(predict, values, total, values["performance_sample_count_override"] or total, folder,
                      timeout_for(values, hints, total, options), response_spin(hints))
    if not result.ok:
        out["accuracy"] = {"error": result.message, "log_dir": str(folder)}
        out["failures"].append(f"accuracy: {result.message}")
        return
    try:
        acc = top1_from_log(folder / ACCURACY, [int(x) for x in labels])
    except AccuracyLogError as exc:
        out["accuracy"] = {"error": str(exc), "log_dir": str(folder)}
        out["failures"].append(f"accuracy: {exc}")
        return
    plugin = float(hints.top1 or 0.0)
    out["accuracy"] = {**acc.as_dict(), "plugin_top1": plugin, "log_dir": str(folder)}
    if acc.total != total:
        out["failures"].append(f"accuracy: LoadGen's accuracy log covers {acc.total} of the {total} samples")
    elif not top1_agrees(acc.top1, plugin, total):
        out["failures"].append(f"accuracy: LoadGen's top-1 {acc.top1:.4%} ({acc.good}/{acc.total}) differs from the "
                               f"plugin's {plugin:.4%} on the same {total} samples")



def record_into(result: dict[str, Any], record: dict[str, Any]) -> None:
    """Put what ``run_scenarios`` returned into a cell's result dict: ``scenarios`` (name -> entry, the
    JSON's shape) and ``loadgen`` (LoadGen's accuracy pass, the measured overhead, skip, failures, notes)."""
    result["scenarios"] = record["scenarios"] or None
    result["loadgen"] = {k: record[k] for k in ("accuracy", "overhead", "skip", "failures", "notes")}
