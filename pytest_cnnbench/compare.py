"""Compare a run with a baseline result file: match cells, compute changes, check fail rules.

Pure functions over result dicts (no pytest), shared by the plugin and the report CLI.

Cells match on (model, backend, device, precision, batch size). Changes are relative
(in %) for latency and throughput and absolute (in percentage points) for accuracy.
A rule ``METRIC:THRESHOLD`` is broken when the metric moves the wrong way by more than
the threshold: latency up, throughput down, accuracy down. ``speedup`` (the paired speedup over
the eager reference) is broken only when its drop also lies outside both runs' 95% intervals.

A gate that checked nothing does not pass: each rule counts the cells it checked, and the gate
fails when a rule checked none, when a cell the baseline measured now skips or errors, and when
an accuracy rule cannot be checked because this run's accuracy means nothing (random weights).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Optional

from . import results
from .results import cell_label



@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    title: str
    path: tuple[str, ...]  # where the figure lives in a result dict
    unit: str  # of the figure itself
    relative: bool  # change in % of the baseline (else in percentage points of a fraction)
    higher_is_worse: bool

    def value(self, row: dict[str, Any]) -> Optional[float]:
        value: Any = row
        for key in self.path:
            value = value.get(key) if isinstance(value, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def change(self, current: Optional[float], baseline: Optional[float]) -> Optional[float]:
        if current is None or baseline is None:
            return None
        if self.relative:
            return 100.0 * (current - baseline) / baseline if baseline > 0 else None
        return 100.0 * (current - baseline)

    def regressed_by(self, change: float) -> float:
        """How far ``change`` goes in the bad direction (negative: it improved)."""
        return change if self.higher_is_worse else -change

    def format_value(self, value: Optional[float]) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if not self.relative else f"{value:.4g} {self.unit}"

    def format_change(self, change: Optional[float]) -> str:
        if change is None:
            return "-"
        return f"{change:+.1f}%" if self.relative else f"{change:+.2f}pp"

    @property
    def threshold_unit(self) -> str:
        return "%" if self.relative else "pp"


def _latency(name: str, title: str) -> Metric:
    return Metric(name, title, ("latency_ms", name), "ms", relative=True, higher_is_worse=True)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _latency("p50", "p50 latency"),
        _latency("p90", "p90 latency"),
        _latency("p99", "p99 latency"),
        _latency("mean", "mean latency"),
        Metric("throughput", "throughput", ("throughput_ips",), "img/s", relative=True, higher_is_worse=False),
        Metric("top1", "top-1", ("top1",), "", relative=False, higher_is_worse=False),
        Metric("top5", "top-5", ("top5",), "", relative=False, higher_is_worse=False),
        # The paired speedup over the eager reference, timed side by side: it holds to a few percent between
        # sessions where absolute p50s move 1.5x, so it is the figure a gate can hold on these machines.
        Metric("speedup", "paired speedup", ("speedup", "value"), "x", relative=True, higher_is_worse=False),
    )
}
ACCURACY_METRICS = ("top1", "top5")
TABLE_METRICS = ("p50", "p99", "throughput", "top1")  # the change columns of the table


class RuleError(ValueError):
    """A ``--cnn-compare-fail`` rule that does not parse; the message names it and the valid metrics."""


@dataclasses.dataclass(frozen=True)
class Rule:
    metric: str
    threshold: float  # % for relative metrics, percentage points for accuracy

    @property
    def text(self) -> str:
        number = f"{self.threshold:f}".rstrip("0").rstrip(".")  # 10, 0.5, 1000000: never 1e+06
        return f"{self.metric}:{number}{METRICS[self.metric].threshold_unit}"


def parse_rules(text: str) -> tuple[Rule, ...]:
    """``"p50:10%,top1:0.5"`` -> rules. Latency/throughput thresholds are in % (the ``%`` is optional);
    accuracy thresholds are in percentage points (``0.5`` or ``0.5pp``)."""
    valid = ", ".join(METRICS)
    rules: dict[str, Rule] = {}
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise RuleError(f"no rules in {text!r}; give METRIC:THRESHOLD, e.g. p50:10%,top1:0.5 (metrics: {valid})")
    for item in items:
        name, sep, raw = (part.strip() for part in item.partition(":"))
        if name not in METRICS:
            raise RuleError(f"rule {item!r}: unknown metric {name!r}; valid metrics: {valid}")
        metric = METRICS[name]
        if not sep or not raw:
            raise RuleError(f"rule {item!r}: give a threshold, e.g. {name}:{'10%' if metric.relative else '0.5'}")
        number = raw
        if metric.relative:
            number = raw[:-1] if raw.endswith("%") else raw
        elif raw.endswith("%"):
            raise RuleError(f"rule {item!r}: {name} changes are in percentage points; write {name}:{raw[:-1]} (or {raw[:-1]}pp)")
        elif raw.endswith("pp"):
            number = raw[:-2]
        try:
            threshold = float(number)
        except ValueError:
            threshold = -1.0
        if not threshold >= 0 or threshold == float("inf"):
            raise RuleError(f"rule {item!r}: threshold {raw!r} is not a non-negative number")
        if name in rules:
            raise RuleError(f"rule {item!r}: metric {name!r} is given twice")
        rules[name] = Rule(name, threshold)
    return tuple(rules.values())


def cell_key(row: dict[str, Any]) -> tuple:
    """The cell's key (results.cell_key) less what a baseline may differ in: the file it came from,
    and the dataset and test (several rows of one configuration pair up by test id, see ``compare``)."""
    return results.cell_key(row, source=None, dataset=None, test_name=None)


def speedup_interval(row: dict[str, Any]) -> Optional[float]:
    """The paired speedup's relative 95% half-width (log scale), None where the row has none."""
    value = (row.get("speedup") or {}).get("ci95_rel") if isinstance(row.get("speedup"), dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def speedup_drop_beyond_intervals(current: dict[str, Any], baseline: dict[str, Any]) -> Optional[bool]:
    """Whether the speedup fell by more than both runs' intervals combined (in quadrature, on the log
    scale the intervals are on); None where either interval is missing."""
    now, before = METRICS["speedup"].value(current), METRICS["speedup"].value(baseline)
    ci_now, ci_before = speedup_interval(current), speedup_interval(baseline)
    if now is None or before is None or ci_now is None or ci_before is None or now <= 0 or before <= 0:
        return None
    return math.log(before / now) > math.hypot(ci_now, ci_before)


@dataclasses.dataclass
class Violation:
    row: dict[str, Any]
    rule: Rule
    current: float
    baseline: float
    change: float

    @property
    def message(self) -> str:
        metric = METRICS[self.rule.metric]
        direction = "slower" if metric.path[0] == "latency_ms" else ("lower" if not metric.higher_is_worse else "higher")
        beyond = " and beyond both runs' 95% intervals" if self.rule.metric == "speedup" else ""
        return (f"{cell_label(self.row)}: {metric.title} {metric.format_value(self.current)} vs "
                f"{metric.format_value(self.baseline)} in the baseline ({metric.format_change(self.change)}, "
                f"{direction} than rule {self.rule.text} allows{beyond})")


@dataclasses.dataclass
class CellChange:
    """One current cell against its baseline cell."""

    baseline: dict[str, Any]
    changes: dict[str, Optional[float]]  # metric name -> change (% or pp), None where not comparable
    broken: tuple[str, ...] = ()  # metrics whose rule this cell breaks
    note: Optional[str] = None

    def table_entry(self) -> dict[str, Any]:
        return {**{name: self.changes.get(name) for name in TABLE_METRICS}, "broken": set(self.broken)}


@dataclasses.dataclass
class Comparison:
    baseline_label: str
    rules: tuple[Rule, ...]
    rows: list[dict[str, Any]]  # the current results
    cells: list[Optional[CellChange]]  # aligned with ``rows``; None: not in the baseline
    only_current: list[dict[str, Any]]
    only_baseline: list[dict[str, Any]]
    violations: list[Violation]
    environment_differences: list[str]
    checked: dict[str, int] = dataclasses.field(default_factory=dict)  # rule's metric -> cells it checked
    unchecked: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # metric -> why -> cells
    lost: list[tuple[dict[str, Any], dict[str, Any]]] = dataclasses.field(default_factory=list)  # (now, baseline)
    accuracy_lost: list[tuple[dict[str, Any], str]] = dataclasses.field(default_factory=list)  # (row, why) per rule

    def rule_lines(self) -> list[str]:
        """Per rule: how many matching cells it checked, and why the others were not."""
        lines = []
        for rule in self.rules:
            why = "; ".join(f"{n} {reason}" for reason, n in self.unchecked.get(rule.metric, {}).items())
            lines.append(f"rule {rule.text} checked {self.checked.get(rule.metric, 0)} of {self.matched} "
                         f"matching cell(s)" + (f" (not checked: {why})" if why else ""))
        return lines

    def gate_failures(self) -> list[str]:
        """Why the gate fails although no checked cell regressed: it could not check what it was asked to."""
        if not self.rules:
            return []
        out = [f"rule {rule.text} checked no cell: nothing it could compare (no matching cells, or no {rule.metric} "
               "figures in them)" for rule in self.rules if not self.checked.get(rule.metric)]
        out += [f"{cell_label(now)}: measured in the baseline, {now.get('status') or 'not measured'} now"
                + (f" ({now['reason']})" if now.get("reason") else "") for now, _ in self.lost]
        out += [f"{cell_label(row)}: {why}" for row, why in self.accuracy_lost]
        return out

    @property
    def failed(self) -> bool:
        return bool(self.violations or self.gate_failures())

    @property
    def matched(self) -> int:
        return sum(cell is not None for cell in self.cells)

    def table_changes(self) -> list[Optional[dict[str, Any]]]:
        """Per current row: the change columns' values for ``table.format_table``."""
        return [cell.table_entry() if cell is not None else None for cell in self.cells]

    def notes(self) -> list[str]:
        """What a reader of the table needs to know about the comparison, one line each."""
        lines = [f"changes against baseline {self.baseline_label}: {self.matched} matching cell(s); "
                 "latency and img/s in %, top-1 in percentage points (pp)"
                 + ("; ! = breaks a --cnn-compare-fail rule" if self.violations else "")]
        if self.only_current:
            lines.append("cells not in the baseline: " + "; ".join(map(cell_label, self.only_current)))
        if self.only_baseline:
            lines.append("baseline cells not in this run: " + "; ".join(map(cell_label, self.only_baseline)))
        lines += [f"{cell_label(row)}: {cell.note}" for row, cell in zip(self.rows, self.cells) if cell and cell.note]
        mixed = results.mixed_speedup_rules([*self.rows, *(c.baseline for c in self.cells if c), *self.only_baseline])
        if mixed:
            lines.append(mixed)
        if self.environment_differences:
            lines.append("WARNING: the baseline was measured in a different environment: "
                         + "; ".join(self.environment_differences))
        return lines


def _measured(row: dict[str, Any]) -> bool:
    return any(METRICS[name].value(row) is not None for name in METRICS)


def _accuracy_meaningless(row: dict[str, Any]) -> str:
    """Why this run's accuracy cannot be checked: its weights or labels make it meaningless."""
    if row.get("weights") == "random":
        return "random weights" + (f" ({row['weights_note']})" if row.get("weights_note") else "")
    return "its accuracy is not valid here (unlabelled data or random weights)"


def compare(current: Iterable[dict[str, Any]], baseline: Iterable[dict[str, Any]], rules: Iterable[Rule] = (),
            baseline_label: str = "baseline", current_env: Optional[dict[str, Any]] = None,
            baseline_env: Optional[dict[str, Any]] = None) -> Comparison:
    """Match ``current`` rows with ``baseline`` rows and check ``rules`` on every matched pair.

    Several rows with one key (two tests timing the same cell) pair up by test id first,
    then in order. Rows without figures (skipped, errors) match but give no changes.
    """
    current, rules = list(current), tuple(rules)
    unused: dict[tuple, list[dict[str, Any]]] = {}
    for row in baseline:
        unused.setdefault(cell_key(row), []).append(row)
    cells: list[Optional[CellChange]] = []
    only_current: list[dict[str, Any]] = []
    violations: list[Violation] = []
    checked: dict[str, int] = {rule.metric: 0 for rule in rules}
    unchecked: dict[str, dict[str, int]] = {rule.metric: {} for rule in rules}
    lost: list[tuple[dict[str, Any], dict[str, Any]]] = []
    accuracy_lost: list[tuple[dict[str, Any], str]] = []

    def skip(metric: str, why: str) -> None:
        unchecked[metric][why] = unchecked[metric].get(why, 0) + 1

    for row in current:
        candidates = unused.get(cell_key(row), [])
        if not candidates:
            cells.append(None)
            only_current.append(row)
            continue
        base = next((b for b in candidates if b.get("test") == row.get("test")), candidates[0])
        candidates.remove(base)
        note = None
        accuracy_comparable = row.get("accuracy_valid") is not False and base.get("accuracy_valid") is not False
        if row.get("dataset") != base.get("dataset"):
            accuracy_comparable = False
            note = f"dataset {base.get('dataset')} in the baseline, {row.get('dataset')} now: accuracy not compared"
        changes: dict[str, Optional[float]] = {}
        for name, metric in METRICS.items():
            if name in ACCURACY_METRICS and not accuracy_comparable:
                changes[name] = None
            else:
                changes[name] = metric.change(metric.value(row), metric.value(base))
        if _measured(base) and (row.get("status") in ("skipped", "error") or not _measured(row)):
            lost.append((row, base))
        broken = []
        for rule in rules:
            change = changes.get(rule.metric)
            if change is None:
                metric = METRICS[rule.metric]
                if rule.metric in ACCURACY_METRICS and metric.value(base) is not None and base.get("accuracy_valid") \
                        is not False and row.get("accuracy_valid") is False and _measured(row):
                    why = _accuracy_meaningless(row)
                    accuracy_lost.append((row, f"rule {rule.text} cannot be checked: this run's {rule.metric} "
                                               f"means nothing ({why}); the baseline's was valid"))
                    skip(rule.metric, "accuracy not valid in this run")
                elif rule.metric in ACCURACY_METRICS and not accuracy_comparable:
                    skip(rule.metric, "accuracy not comparable")
                else:
                    skip(rule.metric, f"without a {rule.metric} figure in both runs")
                continue
            beyond = speedup_drop_beyond_intervals(row, base) if rule.metric == "speedup" else True
            if beyond is None:
                skip(rule.metric, "without a speedup interval in both runs")
                continue
            checked[rule.metric] += 1
            if not beyond:
                continue  # a drop within both runs' intervals is not told apart from noise
            if METRICS[rule.metric].regressed_by(change) > rule.threshold:
                broken.append(rule.metric)
                metric = METRICS[rule.metric]
                violations.append(Violation(row, rule, metric.value(row), metric.value(base), change))  # type: ignore[arg-type]
        cells.append(CellChange(base, changes, tuple(broken), note))
    only_baseline = [row for rows in unused.values() for row in rows]
    differences = environment_differences(baseline_env, current_env) if baseline_env and current_env else []
    return Comparison(baseline_label, rules, current, cells, only_current, only_baseline, violations, differences,
                      checked, unchecked, lost, accuracy_lost)


def _gpu(env: dict[str, Any]) -> Optional[str]:
    names = env.get("gpus") or [d for d in env.get("devices") or [] if not str(d).startswith("cpu")]
    return ", ".join(map(str, names)) or None


def _versions(*names: str):
    return lambda env: next(((env.get("versions") or {}).get(n) for n in names if (env.get("versions") or {}).get(n)), None)


ENVIRONMENT_FIELDS = {
    "CPU model": lambda env: env.get("cpu"),
    "CPU cores": lambda env: env.get("cpu_count"),
    "GPU": _gpu,
    "GPU driver": lambda env: env.get("gpu_driver"),
    "torch": _versions("torch"),
    "ONNX Runtime": _versions("onnxruntime-gpu", "onnxruntime"),
    "TensorRT": _versions("tensorrt"),
    "OMP_NUM_THREADS": lambda env: (env.get("env_vars") or {}).get("OMP_NUM_THREADS"),
}


def environment_differences(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two result files' environments, e.g. ``CPU cores: 8 in the baseline, 2 now``."""
    out = []
    for name, get in ENVIRONMENT_FIELDS.items():
        before, now = get(baseline), get(current)
        if before != now and not (name == "GPU driver" and (before is None or now is None)):
            out.append(f"{name}: {before if before is not None else 'none'} in the baseline, "
                       f"{now if now is not None else 'none'} now")
    return out
