"""Command-line options (one ``cnnbench`` group, each with an ini twin) and their validation.

Validation happens at configure time, before any model is built, and every bad
value is a ``pytest.UsageError`` that names it and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from . import models, registry
from .cache import default_cache_dir
from .core import DEVICES, PRECISIONS
from .thresholds import parse_min_top1

# name -> (help, default); the ini name is the option name with "-" -> "_".
OPTIONS: dict[str, tuple[str, Optional[str]]] = {
    "cnn-backend": ("backends to run: comma list or 'all'", "all"),
    "cnn-model": ("models to run: comma list or 'all' (registered names, param ids of a cnn_model fixture, or any "
                  "ImageNet classifier as torchvision:NAME or timm:NAME, shell wildcards allowed)", "all"),
    "cnn-dataset": ("evaluate on this dataset instead of each model's default (e.g. synthetic)", None),
    "cnn-device": ("device: cpu, cuda or auto (cuda when available)", "auto"),
    "cnn-precision": ("precisions: comma list of fp32, fp16, int8, bf16", "fp32"),
    "cnn-batch-size": ("batch sizes to time: comma list of positive integers", "1"),
    "cnn-weights": ("weights: pretrained, random, or a path to a state dict file", "pretrained"),
    "cnn-data-root": ("folder holding the datasets (default: $CNNBENCH_DATA_ROOT)", None),
    "cnn-cache-dir": ("folder for trained weights and exported models (default: $CNNBENCH_CACHE_DIR or ~/.cache/pytest-cnnbench)", None),
    "cnn-json": ("write every cell's result to this JSON file", None),
    "cnn-warmup": ("untimed warm-up calls before timing, per cell", "10"),
    "cnn-min-rounds": ("fewest timed calls per cell", "50"),
    "cnn-max-time": ("cap on each cell's timed loop, seconds (it stops earlier once the median is known to --cnn-target-ci)", "5.0"),
    "cnn-max-rounds": ("most timed calls per cell", "5000"),
    "cnn-target-ci": ("stop timing once the median's 95% confidence interval is within this fraction (0.02 = +-2%)", "0.02"),
    "cnn-threads": ("CPU threads per cell: 'auto' (probe 1 and one per physical core, keep the faster), a number, "
                    "or a comma list (one row per count, e.g. 1,2,4)", "auto"),
    "cnn-profile": ("print where the run's time went (model, data, prepare, accuracy, timing) after the table", None),
    "cnn-no-download": ("never download data or weights (also $CNNBENCH_NO_DOWNLOAD=1)", None),
    "cnn-report": ("write reports, chosen by extension: .md (table and environment), .csv (one row per cell), "
                   ".json (as --cnn-json), .html (a page in one file: sortable table, charts); comma list, may be repeated", None),
    "cnn-plot": ("draw latency by backend and accuracy against latency into this image (.png, .svg or .pdf; "
                 "needs pytest-cnnbench[plot])", None),
    "cnn-compare": ("compare with this result file of an earlier run (from --cnn-json): adds change columns", None),
    "cnn-compare-fail": ("with --cnn-compare, fail the session when a cell regresses past a rule: comma list of "
                         "METRIC:THRESHOLD, e.g. p50:10%,throughput:5%,top1:0.5 (latency/throughput in %, "
                         "top1/top5 in percentage points; speedup:5% on the paired speedup); a rule that checked no cell fails", None),
    "cnn-selfcheck": ("run only the harness's self-checks (overhead, parity with hand tuning, repeatability)", None),
    "cnn-require-accuracy": ("fail cells whose accuracy cannot be asserted (random weights, unlabelled data) "
                             "instead of passing them with a note", None),
    "cnn-min-top1": ("top-1 floors (fractions) on datasets other than the full ImageNet validation set, e.g. resnet50:0.75,alexnet:0.5", None),
    "cnn-calibration": ("int8 calibration method: minmax, entropy or percentile (ONNX Runtime's calibrators; "
                        "OpenVINO's NNCF maps them to its own range estimators)", "minmax"),
    "cnn-calibration-images": ("int8: calibrate on up to this many real images of the dataset in use "
                               "(held apart from the evaluation images where the dataset has a training split)", "64"),
    "cnn-calibration-dir": ("int8: calibrate on images from this folder (searched recursively, no labels needed) instead "
                            "of the evaluated ImageNet-style folder's; any of them also evaluated is named in the row", None),
    "cnn-calibration-split": ("int8 on an ImageNet-style folder (no calibration split of its own): 'auto' holds a seeded "
                              "pick of --cnn-calibration-images images apart for calibration where the folder has over "
                              "twice as many, and every row evaluates the rest; N holds N apart; 'off' lends them from the "
                              "evaluated images (the row says so)", "auto"),
    "cnn-inductor-mode": ("torch.compile mode for the inductor backend: default, reduce-overhead, "
                          "max-autotune-no-cudagraphs or max-autotune", "default"),
    "cnn-min-time": ("the timed blocks of each cell span at least this many seconds (pauses between them; capped by "
                     "--cnn-max-time), so they sample the machine at different moments", "3.0"),
    "cnn-strict": ("fail cells whose timing was disturbed (another process, stolen time, or calls "
                   "spread beyond 10%, even after measuring again) instead of passing them with a mark", None),
    "cnn-skip-bad-images": ("leave out images of an ImageNet-style folder that are missing or do not decode, with a "
                            "count and a warning, instead of failing the dataset with a list of them", None),
    "cnn-reprobe": ("probe thread counts and TorchScript variants again instead of using the choices remembered "
                    "in the cache for this machine (the new choices are remembered)", None),
    "cnn-progress": ("progress of the long phases (training, export, calibration, accuracy, timing): auto (a live "
                     "line on a terminal, plain lines otherwise, none under -q or on xdist workers), live, plain or off",
                     "auto"),
    "cnn-lock-timeout": ("give up waiting for the machine lock (another run's timing or build) after this many "
                         "seconds: the waiting cell fails, naming the process that holds the lock", "900"),
}
OPTIONS["cnn-accuracy-budget"] = (
    "the top-1 loss against eager fp32, in percentage points, that the line under the table allows when it names "
    "each model's fastest configuration (a row counts when its whole 95% interval stays within it)", "1")


def default(name: str, kind: Callable[[str], Any] = str) -> Any:
    """Option ``name``'s default, as ``kind``: ``OPTIONS`` is the one place defaults are written."""
    return kind(OPTIONS[name][1])


FLAGS = {"cnn-no-download", "cnn-profile", "cnn-selfcheck", "cnn-require-accuracy", "cnn-strict", "cnn-reprobe",
         "cnn-skip-bad-images"}
MULTI = {"cnn-report"}  # may be given several times


def add_options(parser: pytest.Parser, options: Optional[dict[str, tuple[str, Optional[str]]]] = None,
                flags: frozenset[str] | set[str] = frozenset(), multi: frozenset[str] | set[str] = frozenset()) -> None:
    """Each option in the cnnbench group with its ini twin: the core's (the default), or a sub-plugin's own."""
    if options is None:
        options, flags, multi = OPTIONS, FLAGS, MULTI
    group = parser.getgroup("cnnbench", "CNN inference benchmarking (pytest-cnnbench)")
    for name, (ini_help, default) in options.items():
        ini = name.replace("-", "_")
        help_text = ini_help.replace("%", "%%")  # argparse %-formats command-line help, not ini help
        if name in flags:
            group.addoption(f"--{name}", action="store_true", default=None, dest=ini, help=help_text)
            parser.addini(ini, ini_help, type="bool", default=False)
        elif name in multi:
            group.addoption(f"--{name}", action="append", default=None, dest=ini, metavar="PATH", help=help_text)
            parser.addini(ini, ini_help, default=default)
        else:
            shown = f" (default: {default})" if default is not None else ""
            group.addoption(f"--{name}", action="store", default=None, dest=ini, metavar="VALUE", help=help_text + shown)
            parser.addini(ini, ini_help, default=default)


def _raw(config: pytest.Config, name: str) -> Any:
    ini = name.replace("-", "_")
    value = config.getoption(ini)
    if value is None:
        value = config.getini(ini)
    return value


def _names(value: str, option: str, valid: list[str]) -> tuple[str, ...]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise pytest.UsageError(f"--{option}: empty value; valid: all, {', '.join(valid)}")
    if items == ["all"]:
        return tuple(valid)
    bad = [v for v in items if v not in valid]
    if bad:
        raise pytest.UsageError(f"--{option}: unknown {', '.join(map(repr, bad))}; valid: all, {', '.join(valid)}")
    return tuple(dict.fromkeys(items))


def _model_names(value: str) -> Optional[tuple[str, ...]]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise pytest.UsageError(f"--cnn-model: empty value; valid: all, {', '.join(registry.models.names())}")
    if items == ["all"]:
        return None
    names: list[str] = []
    bad: list[str] = []
    for item in items:
        try:  # torchvision:<name> or timm:<name> checked, wildcards expanded; any other name once collected
            names += models.expand(item)
        except registry.UnknownModelError as exc:
            bad.append(str(exc))
    if bad:
        raise pytest.UsageError("--cnn-model: " + "; ".join(bad) if len(bad) == 1 else
                                "--cnn-model:\n    " + "\n    ".join(bad))
    return tuple(dict.fromkeys(names))


class BadValue(ValueError):
    """A value a setting does not accept; the message says why without naming the option, so the one
    validator serves the command line, the ini file and the cnnbench marker (each adds its own name)."""


def positive_integer(value: Any) -> int:
    """A count from the command line, an ini file or a marker: ASCII digits (``str.isdigit`` also takes
    '²', which ``int()`` rejects) or an int, above zero."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip()
        if not (text.isascii() and text.isdigit()):
            raise BadValue(f"{value!r} is not a positive integer")
        number = int(text)
    if number <= 0:
        raise BadValue(f"{value!r} is not a positive integer")
    return number


def positive_integers(value: Any) -> tuple[int, ...]:
    """``"1,8,32"`` (or a marker's list) -> distinct positive integers, in order."""
    items = [value] if isinstance(value, (str, int)) else list(value)
    texts = [part for item in items for part in (str(item).split(",") if isinstance(item, str) else [item])]
    return tuple(dict.fromkeys(positive_integer(item) for item in texts))


def _usage(option: str, check: Any, *args: Any) -> Any:
    try:
        return check(*args)
    except BadValue as exc:
        raise pytest.UsageError(f"--{option}: {exc}") from None


def _positive_ints(value: str, option: str) -> tuple[int, ...]:
    try:
        return positive_integers(value)
    except BadValue as exc:
        raise pytest.UsageError(f"--{option}: {exc} (give e.g. 1,8,32)") from None


def _count(value: Any, option: str) -> int:
    try:
        return positive_integer(value)
    except BadValue as exc:
        raise pytest.UsageError(f"--{option}: {exc} (give e.g. 64)") from None


def finite_number(value: Any, allow_zero: bool = False) -> float:
    """A positive finite float (nan and inf would fail every cell at run time)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise BadValue(f"{value!r} is not a {'non-negative' if allow_zero else 'positive'} finite number")
    return number


def non_negative_integer(value: Any) -> int:
    """A count that may be zero (``--cnn-warmup=0``)."""
    text = str(value).strip()
    if text == "0" or value == 0:
        return 0
    return positive_integer(value)


def _positive_number(value: Any, option: str, kind: type = float) -> Any:
    try:
        return finite_number(value) if kind is float else non_negative_integer(value)
    except BadValue:
        raise pytest.UsageError(f"--{option}: {value!r} is not a valid "
                                f"{'positive finite number' if kind is float else 'count'}") from None


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _calibration_dir(config: pytest.Config) -> Optional[Path]:
    raw = _raw(config, "cnn-calibration-dir")
    if not raw:
        return None
    folder = Path(str(raw).strip()).expanduser()
    if not folder.is_dir():
        raise pytest.UsageError(f"--cnn-calibration-dir: {str(folder)!r} is not a folder")
    return folder


def _calibration_split(value: Any) -> Optional[str]:
    """'auto', a positive count as text, or None (off)."""
    text = str(value if value is not None else "auto").strip().lower()
    if text == "off":
        return None
    if text == "auto":
        return text
    try:
        return str(positive_integer(text))
    except BadValue:
        pass
    raise pytest.UsageError(f"--cnn-calibration-split: {text!r} is not auto, off or a positive integer (e.g. 64)")
INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def _choice(value: Any, option: str, valid: tuple[str, ...]) -> str:
    text = str(value).strip()
    if text not in valid:
        raise pytest.UsageError(f"--{option}: unknown {text!r}; valid: {', '.join(valid)}")
    return text


def threads(value: Any) -> tuple[Optional[int], tuple[int, ...]]:
    """A ``--cnn-threads`` value: (one count, or None for 'auto'; the counts of a sweep, () unless two or
    more are given). Each count goes through the count validator."""
    text = str(value).strip()
    if text == "auto":
        return None, ()
    counts = []
    for item in text.split(","):
        item = item.strip()
        try:
            counts.append(positive_integer(item))
        except BadValue:
            raise BadValue(f"{item!r} is neither 'auto' nor a positive number of threads "
                           "(give auto, 2, or a comma list such as 1,2,4)") from None
    counts = list(dict.fromkeys(counts))
    return (counts[0], ()) if len(counts) == 1 else (None, tuple(counts))


def _threads(value: Any) -> tuple[Optional[int], tuple[int, ...]]:
    return _usage("cnn-threads", threads, value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """The options, validated (``parse_settings``). No defaults here: they are ``OPTIONS``'s, which the ini
    twins and so ``_raw`` fall back to."""

    backends: tuple[str, ...]
    models: tuple[str, ...]
    dataset: Optional[str]
    device: str
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    weights: str
    data_root: Optional[Path]
    cache_dir: Path
    json_path: Optional[Path]
    warmup: int
    min_rounds: int
    max_rounds: int
    max_time: float
    download: bool
    target_ci: float
    threads: Optional[int]  # None: probe per cell ("auto"), or a sweep
    thread_sweep: tuple[int, ...]  # --cnn-threads=1,2,4: one row per count (two or more)
    profile: bool
    reports: tuple[Path, ...]
    plot_path: Optional[Path]
    compare_path: Optional[Path]
    compare_rules: tuple[Any, ...]  # compare.Rule
    min_top1: tuple[tuple[str, float], ...]  # (model, floor) pairs from cnn-min-top1
    # The names --cnn-model listed (None: all). Names that are not registered may be param ids
    # of a user's cnn_model fixture: they are checked once collection has seen those.
    model_names: Optional[tuple[str, ...]]
    selfcheck: bool
    require_accuracy: bool
    calibration_method: str  # int8 calibration: minmax, entropy, percentile
    calibration_images: int  # int8: at most this many calibration images
    calibration_dir: Optional[Path]  # int8: calibration images from this folder (ImageNet-style datasets)
    calibration_split: Optional[str]  # hold images apart for calibration: "auto", a count, None (off)
    inductor_mode: str  # torch.compile mode of the inductor backend
    min_time: float  # the timed blocks span at least this long (capped by max_time)
    strict: bool  # unstable cells fail
    reprobe: bool  # ignore remembered thread counts and TorchScript variants
    skip_bad_images: bool  # leave out missing/undecodable images (counted, warned) instead of failing
    accuracy_budget: float  # top-1 points a row may lose against eager fp32 to count for the fastest-within-budget line
    lock_timeout: float  # seconds a cell waits for the machine lock before it fails
    # The --cnn-compare file's document, loaded once at configure time (--cnn-json may name the same file
    # and rewrite it as cells finish).
    baseline: Optional[dict[str, Any]] = dataclasses.field(compare=False, repr=False)


def _check_writable(path: Path, option: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise pytest.UsageError(f"--{option}: {path} is a folder; give a file path")
    if not parent.is_dir():
        raise pytest.UsageError(f"--{option}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise pytest.UsageError(f"--{option}: {path} is not writable")


def _report_paths(config: pytest.Config) -> tuple[Path, ...]:
    from .report import WRITERS

    raw = _raw(config, "cnn-report") or ()
    items = [item.strip() for value in ([raw] if isinstance(raw, str) else raw) for item in str(value).split(",")]
    paths = tuple(dict.fromkeys(Path(item).expanduser() for item in items if item))
    for path in paths:
        if path.suffix.lower() not in WRITERS:
            raise pytest.UsageError(f"--cnn-report: {str(path)!r} has no report extension; valid: {', '.join(WRITERS)}")
        _check_writable(path, "cnn-report")
    return paths


def _plot_path(config: pytest.Config) -> Optional[Path]:
    import importlib.util

    from .plot import FORMATS

    raw = _raw(config, "cnn-plot")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise pytest.UsageError(f"--cnn-plot: {str(path)!r} has no image extension; valid: {', '.join(FORMATS)}")
    _check_writable(path, "cnn-plot")
    if importlib.util.find_spec("matplotlib") is None:  # say so now, not after the whole run
        raise pytest.UsageError("--cnn-plot needs matplotlib; install it with: pip install 'pytest-cnnbench[plot]'")
    return path


def _compare(config: pytest.Config) -> tuple[Optional[Path], tuple[Any, ...], Optional[dict[str, Any]]]:
    """The --cnn-compare file, its rules and its document (loaded here, once)."""
    from . import compare
    from .results import load_json

    raw, rules_raw = _raw(config, "cnn-compare"), _raw(config, "cnn-compare-fail")
    path = Path(raw).expanduser() if raw else None
    baseline = None
    if path is not None:
        if not path.is_file():
            raise pytest.UsageError(f"--cnn-compare: result file {path} does not exist")
        try:
            baseline = load_json(path)
        except ValueError as exc:
            raise pytest.UsageError(f"--cnn-compare: {exc}") from None
    rules: tuple[Any, ...] = ()
    if rules_raw:
        try:
            rules = compare.parse_rules(rules_raw)
        except compare.RuleError as exc:
            raise pytest.UsageError(f"--cnn-compare-fail: {exc}") from None
        if path is None:
            raise pytest.UsageError("--cnn-compare-fail needs --cnn-compare BASELINE.json to compare with")
    return path, rules, baseline


class _Problems:
    """Collects every bad option value, so one usage error names them all (not only the first)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def check(self, check: Any, *args: Any, default: Any = None) -> Any:
        """``check(*args)``; on a usage error, note it and return ``default``: a stand-in of the right type
        while the other options are checked (never a setting's value: the errors are raised first)."""
        try:
            return check(*args)
        except pytest.UsageError as exc:
            self.messages.append(str(exc))
            return default

    def raise_any(self) -> None:
        if len(self.messages) == 1:
            raise pytest.UsageError(self.messages[0])
        if self.messages:
            raise pytest.UsageError(f"{len(self.messages)} bad cnnbench options:\n  " + "\n  ".join(self.messages))


def _data_root(config: pytest.Config) -> Optional[Path]:
    raw = _raw(config, "cnn-data-root") or os.environ.get("CNNBENCH_DATA_ROOT")
    if not raw:
        return None
    data_root = Path(raw).expanduser()
    if not data_root.is_dir():
        raise pytest.UsageError(f"--cnn-data-root: folder {data_root} does not exist")
    return data_root


def cache_dir(path: Path) -> Path:
    """The cache folder: a writable folder, or one that can be created (its nearest existing parent is)."""
    if path.exists() and not path.is_dir():
        raise BadValue(f"{path} exists and is not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadValue(f"{path} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadValue(f"{path} is not writable" if existing == path else f"{path} cannot be created in {existing}")
    from .cache import unsafe_cache_reason

    why = unsafe_cache_reason(path)
    if why:
        raise BadValue(
            f"refusing the cache folder {path}: {why}. What it holds (TorchScript archives, compiled code, TensorRT "
            f"engines) runs when loaded; make it yours alone (chmod go-w), or give --cnn-cache-dir (or "
            f"$CNNBENCH_CACHE_DIR) a folder of your own")
    return path


def _cache_dir(config: pytest.Config) -> Path:
    raw = _raw(config, "cnn-cache-dir")
    return _usage("cnn-cache-dir", cache_dir, Path(raw).expanduser() if raw else default_cache_dir())


def _rounds(min_rounds: Optional[int], max_rounds: Optional[int]) -> None:
    """Counts win over --cnn-max-time (docs/options.md): so a floor above the ceiling is a contradiction."""
    if min_rounds is not None and max_rounds is not None and min_rounds > max_rounds:
        raise pytest.UsageError(f"--cnn-min-rounds={min_rounds} is above --cnn-max-rounds={max_rounds}; "
                                "lower the first or raise the second")


def _json_path(config: pytest.Config) -> Optional[Path]:
    raw = _raw(config, "cnn-json")
    json_path = Path(raw).expanduser() if raw else None
    if json_path is not None:
        _check_writable(json_path, "cnn-json")
    return json_path


def _dataset(config: pytest.Config) -> Optional[str]:
    dataset = _raw(config, "cnn-dataset")
    if not dataset:
        return None
    dataset = str(dataset).strip()
    if dataset not in registry.datasets:
        raise pytest.UsageError(f"--cnn-dataset: unknown {dataset!r}; give one of {', '.join(registry.datasets.names())}")
    return dataset


def _weights(config: pytest.Config) -> str:
    weights = str(_raw(config, "cnn-weights")).strip()
    if weights not in ("pretrained", "random") and not Path(weights).expanduser().is_file():
        raise pytest.UsageError(f"--cnn-weights: {weights!r} is neither 'pretrained', 'random' nor an existing state dict file")
    return weights


def _min_top1(config: pytest.Config, model_names: Optional[tuple[str, ...]]) -> dict[str, float]:
    zoo_names = [m for m in model_names or () if models.source_of(m) in models.ZOOS]
    try:
        return parse_min_top1(_raw(config, "cnn-min-top1"), [*registry.models.names(), *zoo_names])
    except ValueError as exc:
        raise pytest.UsageError(f"--cnn-min-top1: {exc}") from None


def parse_settings(config: pytest.Config) -> Settings:
    """The options as Settings; every bad value at once in one ``pytest.UsageError``."""
    problems = _Problems()
    check = problems.check
    data_root = check(_data_root, config)
    json_path = check(_json_path, config)
    device = check(_choice, _raw(config, "cnn-device"), "cnn-device", DEVICES, default="auto")
    dataset = check(_dataset, config)
    weights = check(_weights, config, default="pretrained")
    compare_path, compare_rules, baseline = check(_compare, config, default=(None, (), None))
    no_download = bool(_raw(config, "cnn-no-download")) or os.environ.get("CNNBENCH_NO_DOWNLOAD", "") not in ("", "0")
    model_names = check(_model_names, _raw(config, "cnn-model"))
    min_top1 = check(_min_top1, config, model_names, default={})
    zoo_models = tuple(m for m in model_names or () if models.source_of(m) in models.ZOOS)
    threads = check(_threads, _raw(config, "cnn-threads"), default=(None, ()))
    settings = dict(
        backends=check(_names, _raw(config, "cnn-backend"), "cnn-backend", registry.backends.names(), default=()),
        models=tuple(m for m in registry.models.names() if model_names is None or m in model_names) + zoo_models,
        model_names=model_names,
        selfcheck=bool(_raw(config, "cnn-selfcheck")),
        require_accuracy=bool(_raw(config, "cnn-require-accuracy")),
        dataset=dataset or None,
        device=device,
        precisions=check(_names, _raw(config, "cnn-precision"), "cnn-precision", list(PRECISIONS), default=()),
        batch_sizes=check(_positive_ints, _raw(config, "cnn-batch-size"), "cnn-batch-size", default=()),
        weights=weights,
        data_root=data_root,
        cache_dir=check(_cache_dir, config, default=Path(".")),
        json_path=json_path,
        warmup=check(_positive_number, _raw(config, "cnn-warmup"), "cnn-warmup", int, default=0),
        min_rounds=max(1, check(_positive_number, _raw(config, "cnn-min-rounds"), "cnn-min-rounds", int, default=1)),
        max_rounds=max(1, check(_positive_number, _raw(config, "cnn-max-rounds"), "cnn-max-rounds", int, default=1)),
        max_time=check(_positive_number, _raw(config, "cnn-max-time"), "cnn-max-time", float, default=1.0),
        target_ci=check(_positive_number, _raw(config, "cnn-target-ci"), "cnn-target-ci", float, default=1.0),
        threads=threads[0],
        thread_sweep=threads[1],
        profile=bool(_raw(config, "cnn-profile")),
        download=not no_download,
        reports=check(_report_paths, config, default=()),
        plot_path=check(_plot_path, config),
        compare_path=compare_path,
        compare_rules=compare_rules,
        baseline=baseline,
        min_top1=tuple(min_top1.items()),
        calibration_method=check(_choice, _raw(config, "cnn-calibration"), "cnn-calibration", CALIBRATION_METHODS,
                                 default="minmax"),
        calibration_images=check(_count, _raw(config, "cnn-calibration-images"), "cnn-calibration-images", default=1),
        calibration_dir=check(_calibration_dir, config),
        calibration_split=check(_calibration_split, _raw(config, "cnn-calibration-split"), default="auto"),
        inductor_mode=check(_choice, _raw(config, "cnn-inductor-mode"), "cnn-inductor-mode", INDUCTOR_MODES,
                            default="default"),
        min_time=check(_positive_number, _raw(config, "cnn-min-time"), "cnn-min-time", float, default=1.0),
        strict=bool(_raw(config, "cnn-strict")),
        reprobe=bool(_raw(config, "cnn-reprobe")),
        skip_bad_images=bool(_raw(config, "cnn-skip-bad-images")),
        accuracy_budget=check(_positive_number, _raw(config, "cnn-accuracy-budget"), "cnn-accuracy-budget", float,
                              default=1.0),
        lock_timeout=check(_positive_number, _raw(config, "cnn-lock-timeout"), "cnn-lock-timeout", float,
                           default=900.0),
    )
    check(_rounds, settings["min_rounds"] if _raw(config, "cnn-min-rounds") else None,
          settings["max_rounds"] if _raw(config, "cnn-max-rounds") else None)
    for messages in config.hook.pytest_cnnbench_check_options(config=config):  # sub-plugins' own options
        problems.messages.extend(messages)
    problems.raise_any()
    return Settings(**settings)
