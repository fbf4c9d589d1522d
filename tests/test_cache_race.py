"""Several real processes share one artifact cache: each artifact is built once, none is
thrown away as corrupt, and no process's tuning history is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cache_race_worker import CELL, KEYS, SESSIONS_PER_WORKER

from pytest_cnnbench import between_sessions
from pytest_cnnbench.cache import ArtifactCache

WORKERS = 4
WORKER_SCRIPT = Path(__file__).with_name("cache_race_worker.py")
REPO = Path(__file__).resolve().parent.parent


def test_processes_racing_on_one_cache_build_once_and_lose_nothing(tmp_path, monkeypatch):
    cache_dir, logs = tmp_path / "cache", tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start_at = time.time() + 3.0  # past every process's imports, so they start together
    procs = [subprocess.Popen([sys.executable, str(WORKER_SCRIPT), str(cache_dir), str(logs), str(worker), str(start_at)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for worker in range(WORKERS)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * WORKERS, outputs

    builds = {key: (logs / f"builds-{key}.log").read_text().split() for key in KEYS}
    assert all(len(builders) == 1 for builders in builds.values()), f"built more than once: {builds}"
    warned = [line for worker in range(WORKERS) for line in (logs / f"warnings-{worker}.txt").read_text().splitlines()]
    assert not warned, warned  # nothing was discarded as corrupt
    cache = ArtifactCache(cache_dir)
    for worker in range(WORKERS):
        read = json.loads((logs / f"read-{worker}.json").read_text())
        # Every process got the one published build, and it stayed published.
        assert read == {key: f"{key} built by worker {builds[key][0]}" for key in KEYS}, (worker, read)
    monkeypatch.setattr(between_sessions, "SESSION_ID", "the-checking-session")
    record = between_sessions.load(cache, between_sessions.record_key("sessions", *CELL))
    every_session = sorted(f"w{w}-s{s}" for w in range(WORKERS) for s in range(SESSIONS_PER_WORKER))
    assert sorted(s["session"] for s in record["sessions"]) == every_session
    pace = between_sessions.load(cache, between_sessions.record_key("pace"))
    assert sorted(s["session"] for s in pace["sessions"]) == every_session


def test_processes_loading_one_entry_build_it_once(tmp_path):
    """load_or_build: the processes that miss wait for the first one's build and load it."""
    logs = tmp_path / "logs"
    logs.mkdir()
    script = f"""
import sys, time
from pathlib import Path
from pytest_cnnbench.cache import ArtifactCache

def build():
    with open({str(logs / "builds.log")!r}, "a") as log:
        log.write(sys.argv[1] + "\\n")
    time.sleep(0.3)
    return "weights of " + sys.argv[1]

time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
value, path, hit = ArtifactCache(Path({str(tmp_path / "cache")!r})).load_or_build(
    "weights", "k", ".txt", lambda path: path.read_text(), build, lambda value, tmp: tmp.write_text(value))
print(value, hit)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start_at = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", script, str(worker), str(start_at)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for worker in range(WORKERS)]
    outputs = [proc.communicate(timeout=120)[0].split() for proc in procs]
    (builder,) = (logs / "builds.log").read_text().split()
    # One built it (hit False); every other loaded that build (hit True).
    assert sorted(outputs) == sorted([["weights", "of", builder, "False"]] + [["weights", "of", builder, "True"]] * (WORKERS - 1))


def test_an_entry_that_does_not_load_is_discarded_and_rebuilt(tmp_path):
    import warnings

    cache = ArtifactCache(tmp_path)
    cache.store("weights", "k", ".txt", lambda tmp: tmp.write_text("from another build"))

    def load(path: Path) -> str:
        text = path.read_text()
        if text != "ours":
            raise ValueError(f"cannot read {text!r}")
        return text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, path, hit = cache.load_or_build("weights", "k", ".txt", load, lambda: "ours", lambda v, tmp: tmp.write_text(v))
    assert (value, hit, path.read_text()) == ("ours", False, "ours")
    assert any("does not load: ValueError: cannot read 'from another build'" in str(w.message) for w in caught)
    assert cache.load_or_build("weights", "k", ".txt", load, lambda: "rebuilt", lambda v, tmp: tmp.write_text(v))[::2] == ("ours", True)


def test_pace_record_is_rewritten_only_when_this_sessions_pace_moves(tmp_path, monkeypatch):
    """Every cell reports the session's pace; the shared record changes only when the pace does."""
    monkeypatch.setattr(between_sessions, "SESSION_ID", "pace-session")
    cache = ArtifactCache(tmp_path)
    record = cache.path(between_sessions.KIND, between_sessions.record_key("pace"), ".json")
    between_sessions.remember_pace(cache, 0.0010)
    first = record.stat().st_ino  # each write publishes a new file
    between_sessions.remember_pace(cache, 0.0010)
    between_sessions.remember_pace(cache, 0.0010 * (1 + between_sessions.PACE_REWRITE_CHANGE / 2))
    assert record.stat().st_ino == first
    between_sessions.remember_pace(cache, 0.0012)
    assert record.stat().st_ino != first
    monkeypatch.setattr(between_sessions, "SESSION_ID", "later")
    assert between_sessions.earlier_paces(cache) == [0.0012]  # one entry for the session, its latest pace


def test_another_process_of_the_session_leaves_the_pace_record_alone_when_the_pace_barely_moved(tmp_path, monkeypatch):
    """pytest-xdist's workers share one session id: a worker that has written nothing yet reads the
    session's entry in the record itself, and rewrites it only when the pace moved."""
    monkeypatch.setattr(between_sessions, "SESSION_ID", "shared-session")
    monkeypatch.setattr(between_sessions, "_last_pace_written", {})
    cache = ArtifactCache(tmp_path)
    record = cache.path(between_sessions.KIND, between_sessions.record_key("pace"), ".json")
    between_sessions.remember_pace(cache, 0.0010)
    first = record.stat().st_ino
    between_sessions._last_pace_written.clear()  # as in another worker process
    between_sessions.remember_pace(cache, 0.0010 * (1 + between_sessions.PACE_REWRITE_CHANGE / 2))
    assert record.stat().st_ino == first
    between_sessions._last_pace_written.clear()
    between_sessions.remember_pace(cache, 0.0012)
    assert record.stat().st_ino != first
