"""LoadGen test settings, built in Python as plain dicts (no ``FromConfig``, no mlperf.conf read).

``FromConfig`` reads mlperf.conf only on its first call in a process, and an ``audit.config`` in the
working directory silently overrides settings; so every value LoadGen uses is set here, and the
child passes an audit-config path that does not exist (``child.py``).

The official values are mlperf.conf's (mlcommons-loadgen 6.0.17), copied here: they are the
durations and counts a submission runs with. Short runs keep the same seeds, percentiles and
samples per query, and shorten the duration to ``seconds`` with the query counts early stopping needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Union

from . import LOADGEN_NAMES, SCENARIOS

# mlperf.conf (6.0.17): "*.*" seeds, and the per-scenario rules that apply to resnet50.
SEEDS = {"qsl_rng_seed": 2085463073848966840, "sample_index_rng_seed": 2747215439041700203,
         "schedule_rng_seed": 16159082839903944936}
OFFICIAL_MIN_DURATION_MS = 600_000  # *.SingleStream/MultiStream/Offline/Server.min_duration
OFFICIAL_PERFORMANCE_SAMPLES = 1024  # resnet50.*.performance_sample_count_override
OFFICIAL_OFFLINE_MIN_QUERIES = 24576  # resnet50.Offline.min_query_count
LOADGEN_DEFAULT_MIN_QUERIES = 100  # TestSettings' default, where mlperf.conf sets none (SingleStream, Server)
MULTI_STREAM_SAMPLES_PER_QUERY = 8  # *.MultiStream.samples_per_query
MULTI_STREAM_MIN_QUERIES = 662  # *.MultiStream.min_query_count
SINGLE_STREAM_MIN_QUERIES = 64  # the fewest queries early stopping accepts for a p90 (LoadGen's early_stopping.cc)
# Server p99: early stopping accepts a run with no query over the bound from 459 queries on (LoadGen
# 6.0.17 asks for "at least 359 more" after 100).
SERVER_MIN_QUERIES = 459
SERVER_LATENCY_MS = {"resnet50": 15.0}  # resnet50.Server.target_latency (ms); *.Server.target_latency is 10
PERCENTILE = {"single-stream": 0.90, "multi-stream": 0.99, "offline": 0.90, "server": 0.99}
DEFAULT_SECONDS = 3.0  # --cnn-scenario-seconds


@dataclasses.dataclass(frozen=True)
class ScenarioHints:
    """What LoadGen's settings and checks take from the cell's own measurement (``cell.py`` builds them)."""

    p50_s: Optional[float] = None  # the cell's p50 seconds per call at its batch size
    p90_s: Optional[float] = None  # its p90 (None: single-stream's p90 is not compared)
    spread: Optional[float] = None  # its stated relative spread
    model: str = ""  # the model's name, for mlperf.conf's server bound
    top1: Optional[float] = None  # the plugin's top-1 on the same images (None: not checked)
    batch_size: int = 1
    overhead_s: float = 0.0  # LoadGen's per-sample overhead here (``run.measure_overhead``)
    serving_p90_s: Optional[float] = None  # p90 of the SUT's call timed back to back (``run.serving_p90``)

    @classmethod
    def of(cls, hints: Union["ScenarioHints", Mapping[str, Any]]) -> "ScenarioHints":
        """``hints`` as they are, or built from a mapping of the same names (an unknown name is an error)."""
        return hints if isinstance(hints, cls) else cls(**hints)


Hints = Union[ScenarioHints, Mapping[str, Any]]


class ScenarioError(ValueError):
    """A bad scenario option value; the message names the option and what is valid."""


@dataclasses.dataclass(frozen=True)
class ScenarioOptions:
    scenarios: tuple[str, ...] = ()
    server_qps: Optional[float] = None  # None: search the highest rate that meets the bound
    server_latency_ms: Optional[float] = None  # None: the model's mlperf.conf bound (resnet50) or skip
    seconds: float = DEFAULT_SECONDS  # per LoadGen test (short runs)
    official: bool = False  # mlperf.conf's durations and counts
    timeout_s: Optional[float] = None  # per LoadGen test; None: from the expected duration (see ``timeout_for``)
    server_search_steps: int = 4  # bounded search for the highest rate meeting the bound


def parse_scenarios(value: Any) -> tuple[str, ...]:
    """``"single-stream,offline"`` -> names; "" / None -> (); "all" -> every scenario."""
    if value is None:
        return ()
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items or items == ["none"]:
        return ()
    if items == ["all"]:
        return SCENARIOS
    bad = [v for v in items if v not in SCENARIOS]
    if bad:
        raise ScenarioError(f"--cnn-scenario: unknown {', '.join(map(repr, bad))}; valid: all, {', '.join(SCENARIOS)}")
    return tuple(s for s in SCENARIOS if s in items)


def parse_positive(value: Any, option: str) -> Optional[float]:
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ScenarioError(f"--{option}: {value!r} is not a positive number")
    return number


# The longest a server run's schedule may take: its queries arrive at --cnn-server-qps and the run holds the
# machine-wide timing lock meanwhile, so a tiny rate would hold it for days (its timeout is 3x as long).
MAX_SERVER_SCHEDULE_S = 3600.0


def parse_server_qps(value: Any, official: bool = False) -> Optional[float]:
    """--cnn-server-qps: a positive rate at which the queries a server run needs arrive within an hour."""
    qps = parse_positive(value, "cnn-server-qps")
    if qps is None:
        return None
    queries = LOADGEN_DEFAULT_MIN_QUERIES if official else SERVER_MIN_QUERIES
    seconds = max(queries / qps, OFFICIAL_MIN_DURATION_MS / 1000.0 if official else 0.0)
    if queries / qps > MAX_SERVER_SCHEDULE_S:
        lowest = math.ceil(1000 * queries / MAX_SERVER_SCHEDULE_S) / 1000
        raise ScenarioError(f"--cnn-server-qps: {value!r} q/s would take {seconds:.0f} s to issue the {queries} queries "
                            f"a server run needs (at most {MAX_SERVER_SCHEDULE_S:.0f} s); give at least {lowest:g}")
    return qps


def latency_bound_ms(options: ScenarioOptions, model: str) -> Optional[float]:
    """The server scenario's p99 bound: the option, or mlperf.conf's for the model, or None (skip)."""
    if options.server_latency_ms is not None:
        return options.server_latency_ms
    return SERVER_LATENCY_MS.get(model)


def loadgen_settings(scenario: str, options: ScenarioOptions, hints: Hints, *, accuracy: bool = False,
                  server_qps: Optional[float] = None, latency_ms: Optional[float] = None,
                  samples: int = 0) -> dict[str, Any]:
    """Every ``mlperf_loadgen.TestSettings`` field the test uses, as plain values.

    ``hints`` (``ScenarioHints`` or a mapping of its names): ``p50_s`` and ``batch_size``;
    LoadGen pre-generates queries from the expected latency and QPS, so they come from the cell's
    own measurement. ``samples``: the QSL's size (accuracy mode covers all of it)."""
    if scenario not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {scenario!r}")
    hints = ScenarioHints.of(hints)
    p50 = max(float(hints.p50_s or 1e-3), 1e-6)
    batch = max(1, int(hints.batch_size or 1))
    per_sample = p50 / batch if scenario == "offline" else p50  # server queries are single samples
    seconds = options.seconds
    s: dict[str, Any] = {"scenario": LOADGEN_NAMES[scenario], "mode": "AccuracyOnly" if accuracy else "PerformanceOnly",
                         **SEEDS}
    min_ms = OFFICIAL_MIN_DURATION_MS if options.official else int(round(seconds * 1000))
    s["min_duration_ms"] = min_ms
    s["max_duration_ms"] = 0  # no cap: a cap below the needed queries makes the run INVALID
    if scenario == "single-stream":
        s["single_stream_expected_latency_ns"] = max(1, int(p50 * 1e9))
        s["single_stream_target_latency_percentile"] = PERCENTILE[scenario]
        s["min_query_count"] = SINGLE_STREAM_MIN_QUERIES if not options.official else LOADGEN_DEFAULT_MIN_QUERIES
    elif scenario == "multi-stream":
        s["multi_stream_samples_per_query"] = MULTI_STREAM_SAMPLES_PER_QUERY
        s["multi_stream_target_latency_percentile"] = PERCENTILE[scenario]
        # One query is 8 samples, issued to the SUT together: they run in batches of the cell's size.
        s["multi_stream_expected_latency_ns"] = max(1, int(p50 * math.ceil(MULTI_STREAM_SAMPLES_PER_QUERY / batch) * 1e9))
        s["min_query_count"] = MULTI_STREAM_MIN_QUERIES
    elif scenario == "offline":
        s["offline_expected_qps"] = 1.0 / per_sample
        # Short runs: enough samples for ``seconds`` at the expected rate (LoadGen issues one query of them).
        s["min_query_count"] = (OFFICIAL_OFFLINE_MIN_QUERIES if options.official
                                else max(1, int(math.ceil(seconds / per_sample))))
    else:
        qps = server_qps if server_qps is not None else 0.5 / per_sample
        s["server_target_qps"] = float(qps)
        s["server_target_latency_ns"] = int(float(latency_ms if latency_ms is not None else 15.0) * 1e6)
        s["server_target_latency_percentile"] = PERCENTILE[scenario]
        s["min_query_count"] = SERVER_MIN_QUERIES if not options.official else LOADGEN_DEFAULT_MIN_QUERIES
    if accuracy:
        s["min_query_count"] = 1
        s["min_duration_ms"] = 0
    s["performance_sample_count_override"] = min(samples, OFFICIAL_PERFORMANCE_SAMPLES) if samples else 0
    return s


def expected_seconds(settings: dict[str, Any], hints: Hints, samples: int) -> float:
    """How long the LoadGen test should take, from its settings and the cell's latency."""
    hints = ScenarioHints.of(hints)
    p50 = max(float(hints.p50_s or 1e-3), 1e-6)
    batch = max(1, int(hints.batch_size or 1))
    minimum = settings["min_duration_ms"] / 1000.0
    scenario = settings["scenario"]
    if settings["mode"] == "AccuracyOnly":
        return samples * p50 / batch * (1 if scenario != "SingleStream" else batch)
    if scenario == "SingleStream":
        return max(minimum, settings["min_query_count"] * p50)
    if scenario == "MultiStream":
        return max(minimum, settings["min_query_count"] * settings["multi_stream_expected_latency_ns"] / 1e9)
    if scenario == "Offline":
        return max(minimum, settings["min_query_count"] * p50 / batch)
    # Server: the schedule, then draining what queued up when the rate exceeds what the SUT can do.
    queries = max(settings["min_query_count"], minimum * settings["server_target_qps"])
    return max(minimum, queries / settings["server_target_qps"]) + queries * p50


def timeout_for(settings: dict[str, Any], hints: Hints, samples: int, options: ScenarioOptions) -> float:
    """The child's deadline: 3x the expected duration plus 20 s for start-up and logs (or the option)."""
    if options.timeout_s is not None:
        return options.timeout_s
    return 3.0 * expected_seconds(settings, hints, samples) + 20.0
