"""The comparison table: pure functions from result dicts to text (no pytest here)."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from tabulate import tabulate

HEADERS = [
    "model", "backend", "dev", "prec", "bs", "thr", "top-1", "top-5", "agree", "p50 ms", "p99 ms", "±ci",
    "img/s", "host MB", "dev MB", "prep s", "speedup", "status",
]
RANDOM_MARK = "*"
COST_HEADER = "Δtop-1/5 pp"
# Change columns (with --cnn-compare): key in a ``changes`` entry -> header; latency/img/s in %, top-1 in pp.
CHANGE_HEADERS = {"p50": "p50 chg", "p99": "p99 chg", "throughput": "img/s chg", "top1": "top-1 chg"}
BROKEN_MARK = "!"


FALLBACK_MARK = "†"
UNSTABLE_MARK = "?"  # in the ±ci column: the cell's timing is unstable (latency_ms.stable is false)
# Precisions eager PyTorch has no path for on a device: their rows' speedup is over eager fp32.
EAGER_LACKS = {("cpu", "fp16"), ("cpu", "int8"), ("cuda", "int8")}


def test_name(r: dict[str, Any]) -> Optional[str]:
    """Which test measured a row: its function (plus any parameters of its own), without the cell."""
    if r.get("test_name"):
        return r["test_name"]
    test = r.get("test")
    return test.split("::")[-1].split("[")[0] if test else None


def _key(r: dict[str, Any], precision: Optional[str] = None) -> tuple:
    # "source" keeps merged runs apart: speedups are against eager on the same machine; "test"
    # keeps apart rows that other tests measured under other conditions.
    return (r.get("source"), test_name(r), r["model"], r.get("device"), precision or r.get("precision"),
            r["batch_size"], r.get("dataset"))


def speedups(results: list[dict[str, Any]]) -> list[Optional[float]]:
    """Eager p50 / cell p50, against eager of the same test, model, dataset, device, precision and
    batch size; for a precision eager cannot run on that device (int8, fp16 on a CPU), eager fp32."""
    return [speed for speed, _ in _speedups(results)]


def _speedups(results: list[dict[str, Any]]) -> list[tuple[Optional[float], bool]]:
    eager = {}
    for r in results:
        if r["backend"] == "eager" and r.get("latency_ms"):
            eager[_key(r)] = r["latency_ms"]["p50"]
    out: list[tuple[Optional[float], bool]] = []
    for r in results:
        base, fallback = eager.get(_key(r)), False
        if base is None and (r.get("device"), r.get("precision")) in EAGER_LACKS:
            base, fallback = eager.get(_key(r, "fp32")), True
        lat = r.get("latency_ms")
        out.append((base / lat["p50"], fallback) if base and lat and lat.get("p50") else (None, False))
    return out


def _pct(value: Optional[float], valid: Optional[bool]) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.2f}%"
    return text + RANDOM_MARK if valid is False else text


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def accuracy_cost_pp(r: dict[str, Any]) -> tuple[Optional[float], Optional[float]]:
    """Top-1 and top-5 minus the same model's eager fp32 on the same images, in points."""
    def delta(value: Optional[float], reference: Optional[float]) -> Optional[float]:
        return None if value is None or reference is None else 100.0 * (value - reference)

    return delta(r.get("top1"), r.get("reference_top1")), delta(r.get("top5"), r.get("reference_top5"))


def _cost(r: dict[str, Any]) -> str:
    if r["backend"] == "eager" and r.get("precision") == "fp32":
        return "-"
    top1, top5 = accuracy_cost_pp(r)
    if top1 is None:
        return "-"
    text = f"{top1:+.2f}" + ("" if top5 is None else f"/{top5:+.2f}")
    return text + RANDOM_MARK if r.get("accuracy_valid") is False else text


def _spread(lat: dict[str, Any]) -> str:
    if lat.get("ci95_rel") is None:
        return "-"
    return f"{100 * lat['ci95_rel']:.1f}%" + (UNSTABLE_MARK if lat.get("stable") is False else "")


def _agreement(r: dict[str, Any]) -> str:
    a = r.get("agreement")
    if not a or r["backend"] == "eager":
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
    for r, (speed, fallback) in zip(results, _speedups(results)):
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
            prep_text, "-" if speed is None else f"{speed:.2f}x" + (FALLBACK_MARK if fallback else ""), _status(r),
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
    return table_body(results, tablefmt, changes) + "\n" + "\n".join(table_notes(results))


def shows_math(results: list[dict[str, Any]]) -> bool:
    """A ``math`` column is shown only when some row's arithmetic differs from its precision label."""
    return any(r.get("math") and r["math"] != r.get("precision") for r in results)


def table_body(results: list[dict[str, Any]], tablefmt: str = "simple",
               changes: Optional[list[Optional[dict[str, Any]]]] = None) -> str:
    headers, body = list(HEADERS), rows(results)
    if any(r.get("precision") not in (None, "fp32") for r in results):  # the precision trade: its accuracy cost
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
    if any(r.get("precision") not in (None, "fp32") for r in results):
        notes.append(f"{COST_HEADER} = top-1/top-5 minus the same model's eager fp32 on the same images, in points")
    if any(fallback for _, fallback in _speedups(results)):
        notes.append(f"{FALLBACK_MARK} speedup over eager fp32: eager has no path for this precision on this device")
    if shows_math(results):
        notes.append("math = what the GPU computed where it differs from prec (TF32: fp32 inputs rounded to 10-bit mantissas)")
    if any((r.get("latency_ms") or {}).get("stable") is False for r in results):
        notes.append(f"{UNSTABLE_MARK} unstable: ±ci above 10% even after measuring again; the p50 may be off by more "
                     "(see the unstable cells below the table)")
    notes.append("speedup = eager p50 / p50, against eager in the same test; "
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
        body.append([f"{r['model']}-{r['backend']}-bs{r['batch_size']}"] + [f"{phases.get(n, 0.0):.2f}" for n in PHASES]
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
