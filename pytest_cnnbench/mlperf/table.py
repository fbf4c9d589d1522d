"""The scenario table: one row per cell that ran LoadGen scenarios, a column per scenario's metric
with LoadGen's verdict. Pure formatting (no pytest, no LoadGen, no torch)."""

from __future__ import annotations

from typing import Any, Optional

from tabulate import tabulate

from . import SCENARIOS, top1_agrees

HEADERS = {"single-stream": "SingleStream p90", "multi-stream": "MultiStream p99", "offline": "Offline",
           "server": "Server (p99 bound)"}


def _verdict(entry: dict[str, Any]) -> str:
    if entry.get("loadgen") == "VALID" and not entry.get("submission_length"):
        return "VALID, short run"
    return str(entry.get("loadgen") or "?")


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def cell_text(scenario: str, entry: Optional[dict[str, Any]]) -> str:
    if not entry:
        return ""
    if entry.get("skipped"):
        return "skipped: " + str(entry["skipped"]).split(";")[0]
    if entry.get("error"):
        text = str(entry["error"]).splitlines()[0]
        return "ERROR: " + (text if len(text) <= 60 else text[:57] + "...")
    if scenario == "single-stream":
        value = _ms(entry.get("p90_ms"))
    elif scenario == "multi-stream":
        value = _ms(entry.get("p99_ms"))
    elif scenario == "offline":
        value = f"{entry['samples_per_s']:.1f} samples/s" if entry.get("samples_per_s") is not None else "-"
    else:
        value = (f"{entry.get('achieved_qps') or 0:.1f} of {entry.get('target_qps') or 0:g} qps, "
                 f"p99 {_ms(entry.get('p99_ms'))} (<= {entry.get('latency_bound_ms'):g} ms)")
    text = f"{value} [{_verdict(entry)}]"
    agreement = entry.get("p90_agreement") if scenario == "single-stream" else None
    if agreement and agreement.get("agrees") is False:
        text += f" != harness's {_ms(agreement['sut_p90_ms'])}"
    return text


def _accuracy_text(record: Optional[dict[str, Any]]) -> str:
    if not record:
        return ""
    if record.get("error"):
        return "ERROR"
    ok = "=" if top1_agrees(record["top1"], record["plugin_top1"], record["total"]) else "!="
    return f"{record['top1']:.2%} {ok} {record['plugin_top1']:.2%}"


def format_scenario_table(results: list[dict[str, Any]], tablefmt: str = "simple") -> str:
    """The table for the results that carry ``scenarios`` (and ``loadgen``: accuracy, overhead, skip,
    as ``record_into`` in run.py sets them); "" when none does."""
    rows = [r for r in results if r.get("scenarios") or (r.get("loadgen") or {}).get("skip")]
    if not rows:
        return ""
    used = [s for s in SCENARIOS if any(s in (r.get("scenarios") or {}) for r in rows)]
    headers = ["model", "backend", "precision", "batch", *[HEADERS[s] for s in used], "LoadGen top-1 = plugin's"]
    body = []
    for r in rows:
        record = r.get("loadgen") or {}
        if record.get("skip"):
            body.append([r.get("model"), r.get("backend"), r.get("precision"), r.get("batch_size"),
                         *(["skipped"] * len(used)), record["skip"]])
            continue
        body.append([r.get("model"), r.get("backend"), r.get("precision"), r.get("batch_size"),
                     *[cell_text(s, (r.get("scenarios") or {}).get(s)) for s in used],
                     _accuracy_text(record.get("accuracy"))])
    official = any(e.get("submission_length") for r in rows for e in (r.get("scenarios") or {}).values()
                   if isinstance(e, dict))
    note = ("LoadGen scenarios (mlperf.conf durations, --cnn-mlperf-official)" if official else
            "LoadGen scenarios: short runs (--cnn-scenario-seconds), not submission length even where VALID; "
            "--cnn-mlperf-official runs mlperf.conf's 600 s")
    seen: dict[float, dict[str, Any]] = {}
    for r in rows:
        found = (r.get("loadgen") or {}).get("overhead") or {}
        if found.get("p90_ms") is not None:
            seen.setdefault(round(found.get("call_ms") or 0.0, 3), found)
    for call_ms, overhead in sorted(seen.items()):
        how = "no-op SUT" if not call_ms else f"a {call_ms:.3g} ms sleep as the call, less the sleep"
        note += (f"\nLoadGen per-sample overhead here ({how}, through the pipe): "
                 f"p50 {overhead['p50_ms'] * 1000:.0f} µs, p90 {overhead['p90_ms'] * 1000:.0f} µs")
    return note + "\n" + tabulate(body, headers=headers, tablefmt=tablefmt)
