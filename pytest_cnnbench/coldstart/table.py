"""The cold-start table: one row per cell, cold and warm time to first answer, and which backend answers
first per model. Pure formatting (no pytest, no torch)."""

from __future__ import annotations

from typing import Any, Optional

from tabulate import tabulate

from . import NO_ARTIFACT


def _seconds(entry: dict[str, Any], name: str = "first_answer_s") -> str:
    value = entry.get(name)
    if value is None:
        return "-"
    low, high = (entry.get("interval") or {}).get(name, (value, value))
    spread = f" [{low:.2f}-{high:.2f}]" if entry.get("runs", 1) > 1 else ""
    return f"{value:.2f} s{spread}"


def _stages(entry: dict[str, Any]) -> str:
    if not entry or entry.get("import_s") is None:
        return "-"
    return (f"{entry['interpreter_start_s']:.2f}+{entry['import_s']:.2f}+{entry['load_s']:.2f} s, "
            f"1st {entry['first_inference_ms']:.3g} ms")


def _cache(entry: dict[str, Any]) -> str:
    return str(entry.get("runtime_cache") or "-") if entry else "-"


def quickest(results: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """Per model, the backend whose warm (else cold) first answer came soonest: ``{model: (backend, s)}``."""
    best: dict[str, tuple[str, float]] = {}
    for r in results:
        record = r.get("cold_start") or {}
        entry = record.get("warm") or record.get("cold") or {}
        value = entry.get("first_answer_s")
        if record.get("status") != "measured" or value is None:
            continue
        label = r.get("backend") + (f" {r['precision']}" if r.get("precision") not in (None, "fp32") else "")
        label += f" bs{r.get('batch_size')}"
        if r.get("model") not in best or value < best[r["model"]][1]:
            best[r["model"]] = (label, value)
    return best


def format_cold_start_table(results: list[dict[str, Any]]) -> Optional[str]:
    """The table for the results that carry ``cold_start``; None when none does."""
    rows = [r for r in results if r.get("cold_start")]
    if not rows:
        return None
    headers = ["model", "backend", "prec", "bs", "artifact MB", "cold: first answer", "cold cache",
               "warm: first answer", "warm cache", "warm: start+import+load, 1st call", "steady p50 ms", "peak RSS MB"]
    body = []
    for r in rows:
        record = r["cold_start"]
        cold, warm = record.get("cold") or {}, record.get("warm") or {}
        head = [r.get("model"), r.get("backend"), r.get("precision"), r.get("batch_size")]
        if record.get("status") == NO_ARTIFACT:
            body.append([*head, "-", NO_ARTIFACT, "", "", "", "", "", ""])
            continue
        row = [*head, f"{record['artifact_mb']:.2f}" if record.get("artifact_mb") is not None else "-",
               _seconds(cold), _cache(cold), _seconds(warm), _cache(warm), _stages(warm),
               f"{warm['steady_p50_ms']:.3f}" if warm.get("steady_p50_ms") is not None else "-",
               f"{warm['peak_rss_mb']:.0f}" if warm.get("peak_rss_mb") is not None else "-"]
        if record.get("status") == "failed":
            text = str(record.get("error") or "failed")
            row[5] = "FAILED: " + (text if len(text) <= 60 else text[:57] + "...")
        body.append(row)
    lines = ["cold start: a fresh Python process per run deploys the cell's artifact (--cnn-cold-start); "
             "first answer = interpreter start + runtime import + artifact load + first inference; "
             "median [min-max] over the runs; OS page cache warm"]
    lines.append(tabulate(body, headers=headers, tablefmt="simple"))
    for model, (backend, seconds) in sorted(quickest(results).items()):
        lines.append(f"cold start: quickest first answer for {model}: {backend} ({seconds:.2f} s, warm run)")
    return "\n".join(lines)
