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

from pytest_cnnbench import tuning
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
    monkeypatch.setattr(tuning, "SESSION_ID", "the-checking-session")
    record = tuning.load(cache, tuning.record_key("sessions", *CELL))
    sessions = sorted(s["session"] for s in record["sessions"])
    assert sessions == sorted(f"w{w}-s{s}" for w in range(WORKERS) for s in range(SESSIONS_PER_WORKER))
