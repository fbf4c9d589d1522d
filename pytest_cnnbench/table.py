"""The comparison table: pure functions from result dicts to text (no pytest here)."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Optional

from tabulate import tabulate

from .reference_rule import OVER_EAGER_FP32, over_fallback, reference_label, reference_precision, serves_as_reference
from .results import cell_key, cell_label, mixed_speedup_rules

HEADERS = [
    "model", "backend", "dev", "prec", "bs", "thr", "top-1", "top-5", "agree", "p50 ms", "p99 ms", "±ci",
    "img/s", "host MB", "dev MB", "prep s", "speedup", "status",
]
RANDOM_MARK = "*"
COST_HEADER = "Δtop-1"
# Change columns (with --cnn-compare): key in a ``changes`` entry -> header; latency/img/s in %, top-1 in pp.
CHANGE_HEADERS = {"p50": "p50 chg", "p99": "p99 chg", "throughput": "img/s chg", "top1": "top-1 chg"}
BROKEN_MARK = "!"


FALLBACK_MARK = "†"
UNSTABLE_MARK = "?"  # in the ±ci column: the cell's own measurement was disturbed (latency_ms.stable is false)
UNPAIRED_MARK = "~"  # a speedup from two p50s timed apart, not side by side (speedup.paired is false)
OVER_FP32_MARK = "‡"  # bf16 rows: speedup over eager fp32 (reference_rule.OVER_EAGER_FP32), though eager runs bf16 too


def test_name(r: dict[str, Any]) -> Optional[str]:
    """Which test measured a row: its function (plus any parameters of its own), without the cell."""
    if r.get("test_name"):
        return r["test_name"]
    test = r.get("test")
    return test.split("::")[-1].split("[")[0] if test else None


def _key(r: dict[str, Any], precision: Optional[str] = None) -> tuple:
    """The key of the eager cell at ``precision`` (the row's own by default): the same cell, on eager."""
    return cell_key({**r, "test_name": test_name(r)}, backend="eager", precision=precision or r.get("precision"))


def _reference_key(r: dict[str, Any]) -> tuple:
    """The key of the eager row this row is measured against (``reference_rule``; eager fp32's own)."""
    return _key(r, reference_precision(r["backend"], r.get("device"), r.get("precision")))


def speedups(results: list[dict[str, Any]]) -> list[Optional[dict[str, Any]]]:
    """Each row's speedup over eager: ``{"value", "ci95_rel", "paired", "reference"}``.

    A row timed beside its eager reference (``speedup`` in its result) keeps that paired figure.
    Otherwise it is eager p50 / the row's p50, against eager of the same test, model, dataset,
    device, precision and batch size (for a precision eager cannot run on that device, eager
    fp32), marked ``paired: False``: two figures timed apart, each with its own spread."""
    eager = {}
    for r in results:
        if r["backend"] == "eager" and r.get("latency_ms"):
            eager[_key(r)] = r
    out: list[Optional[dict[str, Any]]] = []
    for r in results:
        if serves_as_reference(r["backend"], r.get("precision")) and eager.get(_key(r)) is r:
            out.append({"value": 1.0, "ci95_rel": 0.0, "paired": True, "reference": None})
            continue
        given = r.get("speedup")
        if given and given.get("value"):
            out.append(given)
            continue
        base = eager.get(_reference_key(r))
        lat = r.get("latency_ms")
        if base and lat and lat.get("p50"):
            b = base["latency_ms"]
            spread = math.sqrt((b.get("ci95_rel") or 0) ** 2 + (lat.get("ci95_rel") or 0) ** 2)
            out.append({"value": b["p50"] / lat["p50"], "ci95_rel": spread, "paired": False, "reference": cell_label(base)})
        else:
            out.append(None)
    return out


def eager_ran_otherwise(results: list[dict[str, Any]]) -> list[str]:
    """Rows whose paired speedup was timed with eager at a thread count other than eager's own row's
    (``label: eager at N threads, its row M``): the speedup is the backend's effect at equal threads."""
    eager = {_key(r): r for r in results if r["backend"] == "eager"}
    out = []
    for r in results:
        given = r.get("speedup") or {}
        threads = given.get("threads")
        if r["backend"] == "eager" or not threads:
            continue
        base = eager.get(_reference_key(r))
        if base is not None and base.get("threads") and base["threads"] != threads:
            out.append(f"{cell_label(r)} (eager at {threads}, its row at {base['threads']})")
    return out


def _scaling(r: dict[str, Any]) -> str:
    scaling = r["scaling"]
    low, high = scaling.get("efficiency_low"), scaling.get("efficiency_high")
    interval = f" [{low:.2f}-{high:.2f}]" if low is not None and high is not None else ""
    return f"{cell_label(r)} {scaling['efficiency']:.2f}{interval}"


def _speedup(entry: Optional[dict[str, Any]], r: dict[str, Any]) -> str:
    if entry is None:
        return "-"
    if entry.get("reference") is None:
        return "ref"
    text = f"{entry['value']:.2f}x"
    if entry.get("ci95_rel") is not None and math.isfinite(entry["ci95_rel"]):
        text += f" ±{100 * entry['ci95_rel']:.0f}%" if entry["ci95_rel"] >= 0.095 else f" ±{100 * entry['ci95_rel']:.1f}%"
    if not entry.get("paired"):
        text += UNPAIRED_MARK
    if over_fallback(r.get("device"), r.get("precision")):
        text += FALLBACK_MARK  # against eager fp32: eager has no path for this precision here
    elif r.get("precision") in OVER_EAGER_FP32:
        text += OVER_FP32_MARK
    return text


def session_verdict(results: list[dict[str, Any]]) -> Optional[str]:
    """One line for the whole session when it ran off the machine's usual pace, else None."""
    from .stats import PACE_TOLERANCE, session_pace  # stats needs numpy: imported when a table is made

    pace = session_pace([(r.get("machine") or {}).get("pace") for r in results if r.get("latency_ms")])
    if pace is None or abs(pace - 1) <= PACE_TOLERANCE:
        return None
    probes = [((r.get("machine") or {}).get("pace_probe_us"), (r.get("machine") or {}).get("pace")) for r in results]
    usual = [us / p for us, p in probes if us and p]
    loop = ""
    if usual:
        now = statistics.median(us for us, p in probes if us and p)
        loop = f" (a fixed reference loop took {now:.0f} µs against its usual {statistics.median(usual):.0f} µs)"
    slower = "slower" if pace > 1 else "faster"
    return (f"session: this machine ran {pace:.2f}x {slower} than its usual pace{loop}. Absolute figures "
            f"(p50, p99, img/s) are about {pace:.2f}x {'inflated' if pace > 1 else 'deflated'} against a session at its usual "
            f"pace, and their ±ci includes that; paired speedups, timed side by side, are not affected.")


def _pct(value: Optional[float], valid: Optional[bool]) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.2f}%"
    return text + RANDOM_MARK if valid is False else text


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _cost(r: dict[str, Any]) -> str:
    """The row's top-1 change against eager fp32 with its 95% interval, as the measurement made it."""
    cost = r.get("accuracy_cost")
    if not cost:
        return "-"
    low, high = cost["ci95_pp"]
    text = f"{cost['delta_top1_pp']:+.2f} [{low:+.2f},{high:+.2f}]"
    return text + RANDOM_MARK if r.get("accuracy_valid") is False else text


def _configuration(r: dict[str, Any], several: set[str]) -> str:
    """A row named for a deployer: backend and precision, plus batch size and device where they vary."""
    text = f"{r['backend']} {r.get('precision') or 'fp32'}"
    if "batch_size" in several:
        text += f" at batch {r['batch_size']}"
    if "device" in several:
        text += f" on {r.get('device')}"
    return text


def _over_eager_fp32(r: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The row's paired speedup when it was timed side by side with eager fp32, else None."""
    given = r.get("speedup")
    if not given or not given.get("value") or not given.get("paired"):
        return None
    if given.get("reference") != reference_label(r, "fp32"):
        return None
    return given


def _with_interval(cost: dict[str, Any]) -> str:
    low, high = cost["ci95_pp"]
    return f"{cost['delta_top1_pp']:+.2f} pt [{low:+.2f}, {high:+.2f}]"


def fastest_within_budget(results: list[dict[str, Any]]) -> list[str]:
    """Per model, the configuration with the best paired speedup over eager fp32 among the rows whose
    accuracy verdict is *within* the budget (--cnn-accuracy-budget), with its cost; the rows still
    *inconclusive* beside it; or why none qualifies. Reads the verdicts the measurement made."""
    models: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r.get("accuracy_cost") or (r.get("backend") == "eager" and r.get("precision") == "fp32"):
            models.setdefault(r["model"], []).append(r)
    judged = [r["accuracy_cost"] for rs in models.values() for r in rs if r.get("accuracy_cost")]
    if not judged:
        return []
    budgets = sorted({c["budget_pp"] for c in judged})
    budget = " or ".join(f"{b:g}" for b in budgets)
    lines = [f"fastest within the accuracy budget, per model: of the configurations whose top-1 is at most {budget} "
             f"point{'s' if budgets != [1.0] else ''} below eager fp32's on the same images (the whole 95% interval), "
             f"the one with the best speedup over eager fp32, timed side by side:"]
    for model, rows_ in models.items():
        several = {f for f in ("batch_size", "device") if len({r.get(f) for r in rows_}) > 1}
        costed = [r for r in rows_ if r.get("accuracy_cost")]
        within = [r for r in costed if r["accuracy_cost"].get("verdict") == "within" and _over_eager_fp32(r)]
        open_ = [r for r in costed if r["accuracy_cost"].get("verdict") == "inconclusive"]
        pending = "; not yet known to be within it (the interval straddles the budget): " + ", ".join(
            f"{_configuration(r, several)} ({_with_interval(r['accuracy_cost'])})" for r in open_) if open_ else ""
        if within:
            best = max(within, key=lambda r: _over_eager_fp32(r)["value"])  # type: ignore[index]
            speed = _over_eager_fp32(best)
            spread = speed.get("ci95_rel")  # type: ignore[union-attr]
            spread_text = f" (±{100 * spread:.1f}%)" if spread is not None and math.isfinite(spread) else ""
            slower = " (slower than eager fp32 itself)" if speed["value"] < 1 else ""  # type: ignore[index]
            lines.append(f"  {model}: {_configuration(best, several)}, {speed['value']:.2f}x the speed of eager fp32"  # type: ignore[index]
                         f"{spread_text}{slower}, top-1 {_with_interval(best['accuracy_cost'])} against it{pending}")
            continue
        if not costed:
            why = "no row other than eager fp32 has an accuracy figure"
        elif all(r["accuracy_cost"].get("verdict") is None for r in costed):
            why = "its accuracy means nothing here (random weights or unlabelled data)"
        elif any(r["accuracy_cost"].get("verdict") == "within" for r in costed):
            why = "the rows within the budget were not timed side by side with eager fp32"
        elif open_:
            why = "no row is known to be within the budget yet"
        else:
            why = "every row loses more than the budget"
        lines.append(f"  {model}: none qualifies: {why}{pending}")
    return lines


def _spread(lat: dict[str, Any]) -> str:
    if lat.get("ci95_rel") is None:
        return "-"
    return f"{100 * lat['ci95_rel']:.1f}%" + (UNSTABLE_MARK if lat.get("stable") is False else "")


def _agreement(r: dict[str, Any]) -> str:
    a = r.get("agreement")
    if not a or (r["backend"] == "eager" and r.get("precision") == "fp32"):
        return "-"
    text = f"{100 * a['top1_agree']:.1f}% e{a['rel_err']:.0e}"
    return text if a.get("meaningful") else text + " (n/m)"


def _status(r: dict[str, Any], width: int = 70) -> str:
    status = r.get("status") or "?"
    parts = [r["reason"].replace("\n", " ")] if r.get("reason") else []
    parts += r.get("notes") or []
    reason = "; ".join(parts)
    if reason:
        status = f"{status}: {reason}"
    return status if len(status) <= width else status[: width - 3] + "..."


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r, speed in zip(results, speedups(results)):
        lat = r.get("latency_ms") or {}
        mem = r.get("memory_mb") or {}
        prep = r.get("prepare_s")
        prep_text = _num(prep, ".2f") + (" (c)" if r.get("prepare_cached") and prep is not None else "")
        out.append([
            r["model"], r["backend"], r.get("device") or "-", r.get("precision") or "-", r["batch_size"],
            r.get("threads") or "-",
            _pct(r.get("top1"), r.get("accuracy_valid")), _pct(r.get("top5"), r.get("accuracy_valid")),
            _agreement(r), _num(lat.get("p50"), ".3f"), _num(lat.get("p99"), ".3f"),
            _spread(lat),
            _num(r.get("throughput_ips"), ".1f"), _num(mem.get("host_peak"), ".0f"), _num(mem.get("device_peak"), ".0f"),
            prep_text, _speedup(speed, r), _status(r),
        ])
    return out


def _change(entry: Optional[dict[str, Any]], name: str) -> str:
    value = entry.get(name) if entry else None
    if value is None:
        return "-"
    text = f"{value:+.2f}pp" if name == "top1" else f"{value:+.1f}%"
    return text + BROKEN_MARK if name in entry.get("broken", ()) else text  # type: ignore[union-attr]


def format_table(results: Iterable[dict[str, Any]], tablefmt: str = "simple",
                 changes: Optional[list[Optional[dict[str, Any]]]] = None) -> str:
    """The table and its notes. ``changes`` (one entry or None per result, see ``CHANGE_HEADERS``) adds
    change columns before the status; rows with a ``source`` (merged result files) get a column naming it."""
    results = list(results)
    return table_body(results, tablefmt, changes) + "\n" + "\n".join(lines_under_table(results))


def lines_under_table(results: list[dict[str, Any]]) -> list[str]:
    """What is said under the table: the session line (when off pace), then the notes. The HTML
    page and pytest-html's summary print these too, so a line added here appears in every report."""
    verdict = session_verdict(results)
    return ([verdict] if verdict else []) + fastest_within_budget(results) + table_notes(results)


def shows_math(results: list[dict[str, Any]]) -> bool:
    """A ``math`` column is shown only when some row's arithmetic differs from its precision label."""
    return any(r.get("math") and r["math"] != r.get("precision") for r in results)


def table_body(results: list[dict[str, Any]], tablefmt: str = "simple",
               changes: Optional[list[Optional[dict[str, Any]]]] = None) -> str:
    headers, body = list(HEADERS), rows(results)
    if any(r.get("accuracy_cost") for r in results):  # the precision (or backend) trade: its accuracy cost
        at = headers.index("agree")
        headers.insert(at, COST_HEADER)
        for row, r in zip(body, results):
            row.insert(at, _cost(r))
    if shows_math(results):
        at = headers.index("prec") + 1
        headers.insert(at, "math")
        for row, r in zip(body, results):
            row.insert(at, r.get("math") or "-")
    if changes is not None:
        at = headers.index("status")
        headers[at:at] = CHANGE_HEADERS.values()
        for row, entry in zip(body, changes):
            row[at:at] = [_change(entry, name) for name in CHANGE_HEADERS]
    if len({test_name(r) for r in results}) > 1:  # several tests: say which measured each row
        headers.insert(0, "test")
        for row, r in zip(body, results):
            row.insert(0, test_name(r) or "-")
    if any(r.get("source") for r in results):
        headers.insert(0, "source")
        for row, r in zip(body, results):
            row.insert(0, r.get("source") or "-")
    if tablefmt in ("github", "pipe"):  # a "|" inside a cell would end it
        body = [[str(cell).replace("|", "\\|") for cell in row] for row in body]
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def table_notes(results: list[dict[str, Any]]) -> list[str]:
    notes = []
    if any(r.get("accuracy_valid") is False for r in results):
        notes.append(f"{RANDOM_MARK} accuracy of random (not pretrained) weights or unlabelled data: not meaningful, not asserted")
    if any(r.get("agreement") and not r["agreement"].get("meaningful") for r in results):
        notes.append("(n/m) top-1 agreement not meaningful: the eager reference predicts (nearly) one class for every input")
    if any(r.get("accuracy_cost") for r in results):
        method = next(r["accuracy_cost"]["method"] for r in results if r.get("accuracy_cost"))
        notes.append(f"{COST_HEADER} = top-1 minus the same model's eager fp32 on the same images, in points, "
                     f"[its 95% interval, paired image by image: {method}]")
    if any(FALLBACK_MARK in _speedup(s, r) for s, r in zip(speedups(results), results)):
        notes.append(f"{FALLBACK_MARK} speedup over eager fp32: eager has no path for this precision on this device")
    if any(OVER_FP32_MARK in _speedup(s, r) for s, r in zip(speedups(results), results)):
        notes.append(f"{OVER_FP32_MARK} bf16: speedup over eager fp32 (what bf16 replaces), not over eager bf16")
    if any(s is not None and not s.get("paired") for s in speedups(results)):
        notes.append(f"{UNPAIRED_MARK} speedup from two p50s timed apart (not side by side): its ±ci is both rows' spreads")
    mixed = mixed_speedup_rules(results)  # a merge of older and newer result files
    if mixed:
        notes.append(mixed)
    other_threads = eager_ran_otherwise(results)
    if other_threads:
        notes.append("speedups are timed with eager at the row's own thread count; eager's own row ran with another: "
                     + ", ".join(other_threads))
    scaled = [r for r in results if r.get("scaling")]
    if scaled:  # a thread sweep ran
        notes.append("scaling efficiency (time at 1 thread / time at n / n, the two timed side by side; 95% CI): "
                     + ", ".join(_scaling(r) for r in scaled))
    for evaluation in sorted({f"{r.get('dataset')}: {r['evaluation']}" for r in results if r.get("evaluation")}):
        notes.append(f"evaluated on {evaluation}")  # the same images in every row of that dataset
    if shows_math(results):
        notes.append("math = what the GPU computed where it differs from prec (TF32: fp32 inputs rounded to 10-bit mantissas)")
    if any((r.get("latency_ms") or {}).get("stable") is False for r in results):
        notes.append(f"{UNSTABLE_MARK} disturbed: something else took the machine while this cell was timed, even after "
                     "measuring again; the p50 may be off by more (see the cells below the table)")
    notes.append("speedup = eager p50 / p50, timed side by side with eager (±: 95% CI of the ratio); "
                 "agree = top-1 agreement with eager and max relative logit error; ±ci = 95% CI of the p50; (c) = artifact from cache")
    return notes


PHASES = ("model", "dataset", "prepare", "accuracy", "timing")


def format_profile(results: list[dict[str, Any]]) -> str:
    """Where the run's time went, by phase and by cell (for --cnn-profile)."""
    body, totals = [], dict.fromkeys(PHASES, 0.0)
    for r in results:
        phases = r.get("phases_s") or {}
        if not phases:
            continue
        for name in PHASES:
            totals[name] += phases.get(name, 0.0)
        body.append([cell_label(r)] + [f"{phases.get(n, 0.0):.2f}" for n in PHASES]
                    + [f"{sum(phases.values()):.2f}"])
    body.append(["total"] + [f"{totals[n]:.2f}" for n in PHASES] + [f"{sum(totals.values()):.2f}"])
    return "cnnbench profile (seconds of wall time per phase):\n" + tabulate(
        body, headers=["cell", *PHASES, "sum"], tablefmt="simple", disable_numparse=True)


def format_environment(env: dict[str, Any]) -> str:
    versions = env.get("versions", {})
    parts = [f"{name} {version}" for name, version in versions.items() if version]
    parts += [f"{label} {env[key]}" for key, label in (("cuda", "CUDA"), ("cudnn", "cuDNN"), ("driver", "driver"))
              if env.get(key)]
    devices = env.get("devices") or []
    if devices:
        parts.append("device: " + ", ".join(devices))
    return "cnnbench: " + ", ".join(parts)
