"""One of several processes racing on one artifact cache (run by tests/test_cache_race.py).

Usage: python cache_race_worker.py CACHE_DIR LOG_DIR WORKER START_AT

Waits until the Unix time START_AT so the processes start together, then builds the shared
artifacts, reads them back while others write, and adds its sessions to one tuning history
and to the machine's pace record.
Each build appends a line to LOG_DIR/builds-<key>.log; cache warnings go to
LOG_DIR/warnings-<worker>.txt, and what it read to LOG_DIR/read-<worker>.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

from pytest_cnnbench import between_sessions
from pytest_cnnbench.cache import ArtifactCache

KEYS = ("alpha", "beta", "gamma")
SESSIONS_PER_WORKER = 5
CELL = ("race-cell", 1, "CPUExecutionProvider")
BUILD_SECONDS = 0.3  # long enough that every process reaches a miss while the first one builds


def main(cache_dir: str, log_dir: str, worker: str, start_at: str) -> None:
    cache, logs = ArtifactCache(Path(cache_dir)), Path(log_dir)
    time.sleep(max(0.0, float(start_at) - time.time()))
    read: dict[str, str] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key in KEYS:
            def build(tmp: Path, key: str = key) -> None:
                with open(logs / f"builds-{key}.log", "a") as log:
                    log.write(f"{worker}\n")
                time.sleep(BUILD_SECONDS)
                # Builds need not be byte-identical (exports embed versions, timestamps): each
                # process's build differs, so an artifact paired with another's checksum shows.
                tmp.write_text(f"{key} built by worker {worker}\n" * 1000)

            path, _ = cache.get_or_build("race", key, ".bin", build)
            read[key] = path.read_text().splitlines()[0]
        for session in range(SESSIONS_PER_WORKER):
            between_sessions.SESSION_ID = f"w{worker}-s{session}"
            between_sessions.add_session(cache, CELL, {"p50": float(session)}, keep=1000)
            between_sessions.remember_pace(cache, 0.001 * (1 + session), keep=1000)
            # Read back while the others rewrite the record.
            for key in KEYS:
                if cache.lookup("race", key, ".bin") is None:
                    read[key] = "missing"
            between_sessions.earlier_p50s(cache, CELL)
    (logs / f"warnings-{worker}.txt").write_text("".join(f"{w.message}\n" for w in caught))
    (logs / f"read-{worker}.json").write_text(json.dumps(read))


if __name__ == "__main__":
    main(*sys.argv[1:])
