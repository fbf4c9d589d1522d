"""The result record of one cell, as it travels in ``user_properties`` and lands in JSON.

Plain dicts of JSON types only, so they survive pytest-xdist's serialization.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .cache import write_output

# 2: a paired speedup is timed with eager at the row's own thread count (its record has "threads");
# in 1, eager ran at its own row's count. Both are read; mixing them is marked (``mixed_speedup_rules``).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CELL_PROPERTY = "cnnbench_cell"  # identity, recorded before anything can fail
RESULT_PROPERTY = "cnnbench_result"  # figures, recorded once measured
# Called on each document before it is written; the plugin adds one that calls the
# pytest_cnnbench_update_json hook while a pytest session is configured.
document_updaters: list[Callable[[dict[str, Any]], None]] = []


# What tells one cell from another in a run: the same test measuring the same configuration.
# "source" keeps merged runs apart; "test_name" keeps apart rows other tests measured otherwise.
# "threads_requested": a thread sweep's count (None otherwise, so keys without a sweep are as they were).
CELL_FIELDS = ("source", "test_name", "model", "backend", "device", "precision", "batch_size", "dataset",
               "threads_requested")


def cell_key(row: dict[str, Any], **instead: Any) -> tuple:
    """A cell's one key (``instead`` swaps fields, e.g. ``backend="eager"`` for its reference's)."""
    return tuple(instead[f] if f in instead else row.get(f) for f in CELL_FIELDS)


def cell_label(row: dict[str, Any]) -> str:
    """A cell's one name, e.g. ``resnet50-ort-bs1`` or ``lenet-ort-bs1-int8`` (``-cuda`` on a GPU)."""
    label = f"{row.get('model')}-{row.get('backend')}-bs{row.get('batch_size')}"
    if row.get("precision") not in (None, "fp32"):
        label += f"-{row['precision']}"
    if row.get("device") not in (None, "cpu"):
        label += f"-{row['device']}"
    if row.get("threads_requested") is not None:
        label += f"-t{row['threads_requested']}"
    return f"{label} [{row['source']}]" if row.get("source") else label


def _empty_memory() -> dict[str, Any]:
    return {"host_peak": None, "host_delta": None, "host_after": None, "device_peak": None, "device_peak_source": None}


def _pp(fraction: float) -> float:
    return round(100.0 * fraction, 4)


@dataclasses.dataclass
class AccuracyCost:
    """A row's top-1 against eager fp32's on the same images, paired image by image (stats.paired_difference).

    ``delta_top1_pp`` and ``ci95_pp`` (its 95% interval, [low, high]) are the row's top-1 minus eager fp32's,
    in percentage points (below zero: the row loses accuracy). ``eager_only`` images are right only in eager
    fp32, ``row_only`` right only in this row, of ``n``. ``verdict`` judges the interval against ``budget_pp``
    (--cnn-accuracy-budget): within, exceeds or inconclusive (stats.cost_verdict); None where accuracy means
    nothing (random weights, unlabelled data). ``top5`` holds the same figures for top-5; ``check`` the
    suite's own ``check_precision_cost`` budget and verdict, once it ran."""

    delta_top1_pp: float
    ci95_pp: list[float]
    method: str
    eager_only: int
    row_only: int
    n: int
    verdict: Optional[str]
    budget_pp: float
    delta_top5_pp: Optional[float] = None
    top5: Optional[dict[str, Any]] = None  # {"ci95_pp", "eager_only", "row_only"}
    check: Optional[dict[str, Any]] = None  # {"max_top1_drop_pp", "verdict"} from check_precision_cost

    @classmethod
    def from_pairs(cls, top1: Any, top5: Any, budget_pp: float, judged: bool) -> "AccuracyCost":
        """From ``stats.PairedDifference`` figures (the row first, eager fp32 second)."""
        from .stats import cost_verdict

        low, high = _pp(top1.low), _pp(top1.high)
        extra = None
        if top5 is not None:
            extra = {"ci95_pp": [_pp(top5.low), _pp(top5.high)], "eager_only": top5.second_only, "row_only": top5.first_only}
        return cls(delta_top1_pp=_pp(top1.difference), ci95_pp=[low, high], method=top1.method,
                   eager_only=top1.second_only, row_only=top1.first_only, n=top1.n,
                   verdict=cost_verdict(low, high, budget_pp) if judged else None, budget_pp=budget_pp,
                   delta_top5_pp=_pp(top5.difference) if top5 is not None else None, top5=extra)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CellResult:
    """One cell's figures inside the harness. Typed fields (``latency_ms`` a ``stats.LatencyStats``,
    ``speedup`` a ``stats.Speedup``); ``as_dict()`` is the plain-JSON form that travels in
    ``user_properties`` (and so survives pytest-xdist) and lands in the result file. Suites may
    read it as a mapping too (``result["top1"]``), as they read the JSON."""

    model: str
    backend: str
    device: Optional[str]
    precision: str
    batch_size: int
    dataset: Optional[str]
    samples: Optional[int] = None
    dataset_images: Optional[int] = None  # images in the dataset, where some were held apart for calibration
    evaluation: Optional[str] = None  # which images were evaluated where not all, e.g. "936 of the 1000 images: 64 held apart ..."
    top1: Optional[float] = None
    top5: Optional[float] = None
    accuracy_valid: Optional[bool] = None
    weights: Optional[str] = None
    weights_note: Optional[str] = None  # where the weights came from, or why pretrained ones could not be had
    weights_id: Optional[str] = None  # the published weights, e.g. ResNet50_Weights.IMAGENET1K_V2
    latency_ms: Any = None  # stats.LatencyStats
    speedup: Any = None  # stats.Speedup: the reference's p50 over this row's, timed side by side
    timing_window: Optional[dict[str, float]] = None  # {"start", "end"}: Unix seconds of the first and last timed call
    throughput_ips: Optional[float] = None
    memory_mb: dict[str, Any] = dataclasses.field(default_factory=_empty_memory)
    prepare_s: Optional[float] = None
    prepare_cached: Optional[bool] = None
    artifact_mb: Optional[float] = None
    provider: Optional[str] = None
    math: Optional[str] = None  # what the arithmetic was where it differs from the precision label, e.g. "fp32, TF32 off" (GPU)
    device_name: Optional[str] = None
    gpu: Optional[int] = None  # which visible GPU the row ran on (each xdist worker its own)
    agreement: Optional[dict[str, Any]] = None
    reference_top1: Optional[float] = None  # the same model's eager fp32 on the same images
    reference_top5: Optional[float] = None
    delta_top1_pp: Optional[float] = None  # top-1 minus the reference's, in percentage points (the accuracy cost of the row)
    delta_top5_pp: Optional[float] = None
    accuracy_cost: Any = None  # AccuracyCost: the paired difference from eager fp32 with its interval and verdict
    calibration: Optional[str] = None  # int8: which images calibrated it and how, e.g. "64 MNIST training images, minmax"
    quantization: Optional[str] = None  # int8: the scheme, e.g. "QDQ, u8 activations, s8 per-channel weights"
    compute_latency_ms: Optional[dict[str, Any]] = None  # GPU only: input already on the device, ends with a device sync
    device_time_ms: Optional[dict[str, Any]] = None  # GPU only: CUDA-event time of the same calls
    threads: Optional[int] = None  # CPU threads the cell ran with
    threads_requested: Optional[int] = None  # under a thread sweep (--cnn-threads=1,2): this row's count; else None
    scaling: Optional[dict[str, Any]] = None  # thread sweep, n > 1: time at 1 thread / time at n / n, timed side by side
    thread_pinning: Optional[dict[str, Any]] = None  # what set or pinned the threads: torch's, the runtime's, OMP_*/KMP_*
    thread_probe_ms: Optional[dict[str, float]] = None  # --cnn-threads=auto: probed median per thread count
    thread_choice: Optional[dict[str, Any]] = None  # where the thread count came from and the probe's verdict
    machine: Optional[dict[str, Any]] = None  # the load over the cell's timing: others' CPU share, steal, pace
    companions_ms: Optional[dict[str, Any]] = None  # calls timed in the same loop as the cell (self-checks), by name
    phases_s: dict[str, float] = dataclasses.field(default_factory=dict)  # wall time by phase (--cnn-profile)
    accuracy_asserted: Optional[bool] = None  # False: accuracy means nothing here (the notes say why), nothing asserted
    notes: list[str] = dataclasses.field(default_factory=list)  # findings a suite adds with cnnbench.note()
    reference_cached: Optional[bool] = None  # eager logits read from the disk cache
    accuracy_cached: Optional[bool] = None  # this backend's logits read from the disk cache (None: never cached)
    status: Optional[str] = None
    reason: Optional[str] = None
    test: Optional[str] = None
    test_name: Optional[str] = None  # the test function and its own parameters, without the cell
    # Set by a sub-plugin through ``pytest_cnnbench_cell_measured`` (--cnn-scenario); declared so every row has them.
    scenarios: Optional[dict[str, Any]] = None  # deployment scenarios' figures, by scenario
    loadgen: Optional[dict[str, Any]] = None  # how the scenarios ran: accuracy pass, overhead, skip, failures, notes
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys an extension adds

    @classmethod
    def for_cell(cls, cell: dict[str, Any]) -> "CellResult":
        return cls(model=cell["model"], backend=cell["backend"], device=cell.get("device"),
                   precision=cell.get("precision", "fp32"), batch_size=cell["batch_size"], dataset=cell.get("dataset"),
                   test=cell.get("test"), test_name=cell.get("test_name"), threads_requested=cell.get("threads_requested"))

    def set(self, **values: Any) -> None:
        """Set several fields at once; an unknown name is an error, not a new key."""
        for name, value in values.items():
            if name not in _FIELDS:
                raise AttributeError(f"CellResult has no field {name!r}")
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        out = {name: _plain(getattr(self, name)) for name in _FIELDS if name != "extra"}
        out.update({k: _plain(v) for k, v in self.extra.items()})
        return out

    def __setitem__(self, key: str, value: Any) -> None:
        """A declared field by name; any other key lands in ``extra`` (and in the JSON)."""
        if key in _FIELDS and key != "extra":
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS and key != "extra":
            return _plain(getattr(self, key))
        return _plain(self.extra[key])

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


_FIELDS = tuple(f.name for f in dataclasses.fields(CellResult))


def _plain(value: Any) -> Any:
    """A field's JSON form: typed records by their own ``as_dict``."""
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if callable(as_dict) else value


def empty_result(cell: dict[str, Any]) -> dict[str, Any]:
    """A row with the cell's identity and no figures yet (the JSON form of a fresh ``CellResult``)."""
    return CellResult.for_cell(cell).as_dict()


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as null. numpy scalars and arrays (a suite's note or result may hold
    them) become Python numbers and lists; tuples become lists."""
    if type(value).__module__ == "numpy" and callable(getattr(value, "tolist", None)):
        value = value.tolist()  # np.float32(1.5) -> 1.5, np.int64 -> int, arrays -> nested lists
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def document(results: Iterable[dict[str, Any]], environment: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "environment": _finite(environment), "results": [_finite(r) for r in results]}


def write_json(path: Path, results: Iterable[dict[str, Any]], environment: dict[str, Any]) -> None:
    """Atomic rewrite: a reader (or a run killed mid-write) never sees half a file."""
    doc = document(results, environment)
    for update in document_updaters:
        update(doc)
    write_output(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


def load_json(path: Path) -> dict[str, Any]:
    """Read a result file; ``ValueError`` with a message fit for users when it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    version: Optional[int] = data.get("format_version") if isinstance(data, dict) else None
    if version is None:
        raise ValueError(f"{path}: not a pytest-cnnbench result file (no format_version)")
    if version not in READABLE_VERSIONS:
        age = ("a newer" if version > FORMAT_VERSION else "an older") if isinstance(version, int) else "an unknown"
        raise ValueError(
            f"{path}: result format version {version!r} (written by {age} pytest-cnnbench) is not supported; "
            f"this pytest-cnnbench reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            + ("; upgrade pytest-cnnbench to read it" if age == "a newer" else ""))
    if not isinstance(data.get("results"), list) or not all(
            isinstance(r, dict) and {"model", "backend", "batch_size"} <= r.keys() for r in data["results"]):
        raise ValueError(f"{path}: malformed result file (\"results\" must be a list of cell results)")
    problem = _environment_problem(data.get("environment"), "environment") or next(
        (p for i, row in enumerate(data["results"]) if (p := _row_problem(row, i))), None)
    if problem:
        raise ValueError(f"{path}: malformed result file ({problem})")
    return data


def speedup_rule(row: dict[str, Any]) -> Optional[str]:
    """Which rule a row's paired speedup was timed under: "equal threads" (format 2: eager at the row's
    thread count) or "eager's own threads" (format 1); None without a paired speedup."""
    speedup = row.get("speedup")
    if not isinstance(speedup, dict) or not speedup.get("paired"):
        return None
    return "equal threads" if "threads" in speedup else "eager's own threads"


def mixed_speedup_rules(rows: Iterable[dict[str, Any]]) -> Optional[str]:
    """A warning when ``rows`` hold paired speedups of both rules (older files beside newer): their
    figures mean different things and must not be compared (None when they do not mix)."""
    old = [row for row in rows if speedup_rule(row) == "eager's own threads"]
    if not old or not any(speedup_rule(row) == "equal threads" for row in rows):
        return None
    return (f"WARNING: {len(old)} speedup(s) from an older result file were timed with eager at its own row's thread "
            "count, the others with eager at the row's own: they are not comparable (" + ", ".join(map(cell_label, old[:3]))
            + (", ..." if len(old) > 3 else "") + ")")


# The result file's shape, as far as readers rely on it: a file edited by hand, or written by
# something else, gets one message naming the first wrong field instead of a traceback.
_ENVIRONMENT_KINDS: dict[str, tuple[type, ...]] = {
    "versions": (dict,), "env_vars": (dict,), "options": (dict,), "devices": (list,), "gpus": (list,),
    "argv": (list,), "git_commit": (str,), "merged": (list,)}
_JSON_KINDS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,), "list": (list,),
               "Any": (dict,)}  # the Any fields are typed records (latency, speedup): objects in JSON


def _kind_name(kinds: tuple[type, ...]) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
            list: "a list"}[kinds[-1]]


def _environment_problem(env: Any, where: str) -> Optional[str]:
    if not isinstance(env, dict):
        return f"\"{where}\" must be an object, not {'missing' if env is None else type(env).__name__}"
    for key, kinds in _ENVIRONMENT_KINDS.items():
        if env.get(key) is not None and not isinstance(env[key], kinds):
            return f"\"{where}.{key}\" must be {_kind_name(kinds)}"
    for key in ("devices", "argv"):
        if not all(isinstance(item, str) for item in env.get(key) or ()):
            return f"\"{where}.{key}\" must be a list of strings"
    for i, entry in enumerate(env.get("merged") or ()):
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            return f"\"{where}.merged[{i}]\" must be an object with a \"source\" string"
        problem = _environment_problem(entry.get("environment"), f"{where}.merged[{i}].environment")
        if problem:
            return problem
    return None


def _field_kinds() -> dict[str, tuple[type, ...]]:
    kinds = {}
    for field in dataclasses.fields(CellResult):
        text = str(field.type).replace("Optional[", "").replace("]", "")
        base = text.split("[")[0]
        if base in _JSON_KINDS and field.name != "extra":  # extra: keys spread into the row
            kinds[field.name] = _JSON_KINDS[base]
    return kinds


_FIELD_KINDS = _field_kinds()


def _row_problem(row: dict[str, Any], index: int) -> Optional[str]:
    for name, kinds in _FIELD_KINDS.items():
        value = row.get(name)
        if value is None and name != "batch_size":
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"results[{index}].{name} must be {_kind_name(kinds)}, not {json.dumps(value)[:40]}"
    if row.get("source") is not None and not isinstance(row["source"], str):
        return f"results[{index}].source must be a string"
    return None
