"""What the harness remembers between sessions, per machine and cell, in the artifact cache.

- The thread count a probe chose for a cell, and the TorchScript variant, so a later session
  on the same machine measures the same configuration instead of probing again (and perhaps
  flipping on a near tie). A change of machine (CPU model, core count) or of the versions of
  torch or ONNX Runtime changes the key, so the choice is probed again; ``--cnn-reprobe``
  probes again regardless.
- The p50 of each earlier session of a cell in a given configuration, from which the
  between-session part of the stated spread is estimated (``stats.session_spread``).

Records are small JSON files under ``<cache>/tuning/``, written atomically with a checksum
like every artifact. The session records are shared by every process on the machine, so each
update reads, changes and writes its record while holding the record's lock. No torch here.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import uuid
import warnings
from typing import Any, Callable, Optional

from .cache import ArtifactCache, CacheWarning, hash_parts
from .environment import cpu_model, package_version, physical_cores
from .machine import cpu_count

KIND = "tuning"
# This run: its own measurements are not "earlier sessions". pytest-xdist gives all workers of
# one run the same id, so one worker's cells are not another's earlier session.
SESSION_ID = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:12]
# Relative change of this session's pace p10 below which its record is not rewritten.
PACE_REWRITE_CHANGE = 0.01


def machine_identity() -> dict[str, Any]:
    """What a remembered choice depends on besides the cell."""
    return {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "cpus": cpu_count(),
        "arch": platform.machine(),
        "torch": package_version("torch"),
        "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
    }


def record_key(kind: str, *parts: Any) -> str:
    identity = machine_identity()
    return hash_parts(kind, *(f"{k}={identity[k]}" for k in sorted(identity)), *(str(p) for p in parts))


def load(cache: ArtifactCache, key: str) -> Optional[dict[str, Any]]:
    path = cache.lookup(KIND, key, ".json")
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        cache.discard(path, f"not a JSON record: {exc}")
        return None
    problem = _shape_problem(data)
    if problem:  # valid JSON of another shape (edited by hand, or written by something else)
        cache.discard(path, f"not a tuning record: {problem}")
        return None
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shape_problem(data: Any) -> Optional[str]:
    """What makes ``data`` unlike the records ``remember_choice`` and ``update`` write, or None."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if "choice" in data and (not isinstance(data["choice"], (str, int)) or isinstance(data["choice"], bool)):
        return f"its choice is {json.dumps(data['choice'])[:40]}"
    sessions = data.get("sessions", [])
    if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
        return "its sessions are not a list of objects"
    for entry in sessions:
        for name in ("p50", "p10"):
            if entry.get(name) is not None and not _number(entry[name]):
                return f"a session's {name} is {json.dumps(entry[name])[:40]}"
    return None


def save(cache: ArtifactCache, key: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True)
    try:
        cache.store(KIND, key, ".json", lambda tmp: tmp.write_text(text))
    except OSError as exc:  # a read-only cache must not fail the cell
        _cannot_remember(cache, data.get("what", "a choice"), exc)


def _cannot_remember(cache: ArtifactCache, what: str, exc: OSError) -> None:
    warnings.warn(CacheWarning(f"cnnbench: cannot remember {what} in {cache.root}: {exc}"))


def update(cache: ArtifactCache, key: str, what: str,
           change: Callable[[Optional[dict[str, Any]]], Optional[dict[str, Any]]]) -> None:
    """Read, change and write back one record under its lock, so concurrent writers lose nothing.
    ``change(record or None)`` returns the new record, or None to leave it as it is."""
    try:
        with cache.locked(KIND, key, ".json"):
            new = change(load(cache, key))
            if new is not None:
                save(cache, key, new)
    except OSError as exc:  # the lock cannot be made: a read-only cache
        _cannot_remember(cache, what, exc)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def remembered_choice(cache: ArtifactCache, what: str, parts: tuple, reprobe: bool = False) -> Optional[dict[str, Any]]:
    """The record of an earlier choice (``{"choice": ..., "evidence": ...}``) or None."""
    if reprobe:
        return None
    record = load(cache, record_key(what, *parts))
    return record if record and "choice" in record else None


def remember_choice(cache: ArtifactCache, what: str, parts: tuple, choice: Any, evidence: dict[str, Any]) -> None:
    save(cache, record_key(what, *parts), {"what": what, "choice": choice, "evidence": evidence, "when": now(),
                                           "machine": machine_identity(), "cell": [str(p) for p in parts]})


# -- session histories: one entry per session, the latest ``keep`` kept, shared by every process ----
def earlier(cache: ArtifactCache, key: str, field: str) -> list[float]:
    """``field`` of each earlier session's entry in the history record ``key``, oldest first."""
    record = load(cache, key) or {}
    return [s[field] for s in record.get("sessions", []) if s.get("session") != SESSION_ID and s.get(field)]


def add_to_history(cache: ArtifactCache, key: str, what: str, empty: dict[str, Any], entry: dict[str, Any], keep: int,
                   unchanged: Optional[Callable[[dict[str, Any]], bool]] = None) -> None:
    """Put this session's ``entry`` in the history record ``key`` (``empty`` starts a new record),
    replacing the session's earlier entry and keeping the latest ``keep``, under the record's lock
    (``update``). ``unchanged(this session's last entry)`` true: leave the record as it is."""
    def add(record: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        record = record or {**empty, "sessions": []}
        sessions = record.get("sessions", [])
        own = [s for s in sessions if s.get("session") == SESSION_ID]
        if own and unchanged is not None and unchanged(own[-1]):
            return None
        sessions = [s for s in sessions if s.get("session") != SESSION_ID]
        sessions.append({"session": SESSION_ID, "when": now(), **entry})
        record["sessions"] = sessions[-keep:]
        record["machine"] = machine_identity()
        return record

    update(cache, key, what, add)


def earlier_p50s(cache: ArtifactCache, parts: tuple) -> list[float]:
    """p50s (ms) of this cell and configuration in earlier sessions on this machine, oldest first."""
    return earlier(cache, record_key("sessions", *parts), "p50")


def add_session(cache: ArtifactCache, parts: tuple, entry: dict[str, Any], keep: int) -> None:
    add_to_history(cache, record_key("sessions", *parts), "a session's p50",
                   {"what": "sessions", "cell": [str(p) for p in parts]}, entry, keep)


def earlier_paces(cache: ArtifactCache) -> list[float]:
    """The machine's pace in earlier sessions (each session's 10th percentile of the pace probe, seconds)."""
    return earlier(cache, record_key("pace"), "p10")


def _barely_moved(last: Optional[float], p10: float) -> bool:
    """Whether this session's p10 moved less than ``PACE_REWRITE_CHANGE`` from the one written last."""
    return last is not None and last > 0 and abs(last - p10) <= PACE_REWRITE_CHANGE * last


def remember_pace(cache: ArtifactCache, p10: float, keep: int = 20) -> None:
    """This session's pace in the machine's shared record. Called after every cell: the record
    is rewritten only when this session's p10 is new or has moved by ``PACE_REWRITE_CHANGE``."""
    written = (str(cache.root), SESSION_ID)
    if _barely_moved(_last_pace_written.get(written), p10):  # skip even the lock and the read
        return
    add_to_history(cache, record_key("pace"), "the machine's pace", {"what": "pace"}, {"p10": p10}, keep,
                   unchanged=lambda own: _barely_moved(own.get("p10"), p10))
    _last_pace_written[written] = p10


_last_pace_written: dict[tuple[str, str], float] = {}  # (cache root, session) -> p10 this process wrote last
