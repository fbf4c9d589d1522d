"""Read LoadGen's detail log (``mlperf_log_detail.txt``): one ``:::MLLOG {json}`` record per line.

LoadGen has no results API; its verdict and figures are these records (``result_validity``,
``result_90.00_percentile_latency_ns``, ``result_samples_per_second``, ``early_stopping_*``, ...).
Pure: no LoadGen, no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

PREFIX = ":::MLLOG"
DETAIL = "mlperf_log_detail.txt"
ACCURACY = "mlperf_log_accuracy.json"


class LogError(ValueError):
    """The detail log is missing, empty or lacks a record the result needs."""


def parse_lines(lines: Any) -> dict[str, Any]:
    """``key -> value`` of every MLLOG record (the last one wins); other lines are ignored.
    Errors and warnings LoadGen logged are collected under ``"_errors"``/``"_warnings"``."""
    records: dict[str, Any] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for line in lines:
        line = line.strip()
        if not line.startswith(PREFIX):
            continue
        try:
            record = json.loads(line[len(PREFIX):])
        except ValueError:
            continue  # a line cut short (the process died writing it) holds nothing to trust
        if not isinstance(record, dict) or "key" not in record:
            continue
        key, value = record["key"], record.get("value")
        if key == "error":
            errors.append(str(value))
        elif key == "warning":
            warnings.append(str(value))
        records[key] = value
    records["_errors"] = errors
    records["_warnings"] = warnings
    return records


def read_detail(folder: Path) -> dict[str, Any]:
    path = Path(folder) / DETAIL
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise LogError(f"LoadGen wrote no detail log ({path}: {exc.strerror or exc})") from None
    records = parse_lines(text.splitlines())
    if len(records) <= 2:
        raise LogError(f"LoadGen's detail log {path} holds no :::MLLOG records")
    return records


def _need(records: dict[str, Any], key: str) -> Any:
    if key not in records:
        raise LogError(f"LoadGen's detail log has no {key!r} record (the test did not finish its report)")
    return records[key]


def _ms(value: Any) -> Optional[float]:
    return None if value is None else float(value) / 1e6


def _reasons(records: dict[str, Any]) -> list[str]:
    reasons = []
    if records.get("result_perf_constraints_met") is False:
        reasons.append("performance constraints not met")
    if records.get("result_min_duration_met") is False:
        reasons.append("min duration not met")
    if records.get("result_min_queries_met") is False:
        reasons.append("min queries not met")
    if records.get("early_stopping_met") is False:
        reasons.append("early stopping not met")
    text = str(records.get("result_invalid_reason") or "").strip()
    if text:
        reasons.append(text)
    return reasons


def summarize(scenario: str, records: dict[str, Any]) -> dict[str, Any]:
    """The ``scenarios`` entry for one performance run, from its detail log's records.

    single-stream: ``p90_ms``, ``early_stopping_p90_ms``; multi-stream: ``p99_ms`` per query (and its
    early-stopping estimate); offline: ``samples_per_s``; server: ``target_qps``, ``achieved_qps``,
    ``p99_ms``. Every entry: ``queries``, ``duration_s``, ``loadgen`` (VALID/INVALID), ``invalid_reasons``."""
    validity = _need(records, "result_validity")
    out: dict[str, Any] = {"loadgen": validity, "invalid_reasons": _reasons(records) if validity != "VALID" else []}
    out["queries"] = int(_need(records, "result_query_count"))
    out["duration_s"] = _duration(records)
    if scenario == "single-stream":
        out["p90_ms"] = _ms(_need(records, "result_90.00_percentile_latency_ns"))
        early = records.get("early_stopping_latency_ss")
        out["early_stopping_p90_ms"] = _ms(early) if early else None
    elif scenario == "multi-stream":
        out["p99_ms"] = _ms(_need(records, "result_99.00_percentile_per_query_latency_ns"))
        early = records.get("early_stopping_latency_ms")
        out["early_stopping_p99_ms"] = _ms(early) if early else None
    elif scenario == "offline":
        out["samples_per_s"] = float(_need(records, "result_samples_per_second"))
    elif scenario == "server":
        out["target_qps"] = float(records.get("effective_target_qps") or records.get("requested_server_target_qps") or 0)
        out["achieved_qps"] = float(_need(records, "result_completed_samples_per_sec"))
        out["scheduled_qps"] = records.get("result_scheduled_samples_per_sec")
        out["p99_ms"] = _ms(_need(records, "result_99.00_percentile_latency_ns"))
        out["overlatency_queries"] = records.get("result_overlatency_query_count")
    else:
        raise LogError(f"unknown scenario {scenario!r}")
    return out


def _duration(records: dict[str, Any]) -> Optional[float]:
    """Seconds of the performance run: LoadGen's ``power_begin`` to ``power_end`` (millisecond stamps)."""
    import datetime

    try:
        begin, end = (datetime.datetime.strptime(str(records[k]), "%m-%d-%Y %H:%M:%S.%f") for k in ("power_begin", "power_end"))
    except (KeyError, ValueError):
        return None
    return round((end - begin).total_seconds(), 3)
