"""Shared helpers for the plugin's own tests: temporary pytest projects run in a subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def shared_data_root() -> Path | None:
    """The real MNIST / ImageNet sample folder (../shared/data), or $CNNBENCH_DATA_ROOT."""
    for candidate in (os.environ.get("CNNBENCH_DATA_ROOT"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate).resolve()
    return None


# Quick timing so a whole run of the tiny model takes seconds.
FAST = ["--cnn-warmup=2", "--cnn-min-rounds=5", "--cnn-max-time=0.05", "-p", "no:cacheprovider"]


@pytest.fixture(autouse=True)
def _runs_as_a_user_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytester run is a user's own pytest, even when these tests run under pytest-xdist: it must
    not inherit this worker's identity (pytest-benchmark, progress and the session id read it)."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_project(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> pytest.Pytester:
    """A project with the tiny model/backend conftest and a one-test suite, and its own cache."""
    pytester.makeconftest((FIXTURES / "tiny_conftest.py").read_text())
    pytester.makepyfile(test_suite=(FIXTURES / "test_tiny_suite.py").read_text())
    pytester.makeini("[pytest]\ncnn_model = tiny\n")
    pytester._monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return pytester


@pytest.fixture(scope="session")
def real_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for every run on real data in this test session, so LeNet trains (and
    exports) once rather than in each pytester project (pytester points HOME elsewhere)."""
    return tmp_path_factory.mktemp("real-data-cache")


def load_results(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["results"]
