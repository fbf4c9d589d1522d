"""The update hooks add to what the plugin (or a conftest's own generating hook) produces,
instead of replacing it."""

from __future__ import annotations

import json

import pytest

from conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

UPDATES = """

def pytest_cnnbench_update_environment(config, environment):
    environment["lab"] = "rack 3"


def pytest_cnnbench_update_json(config, document):
    document["ci_run"] = {"id": 42, "cells": len(document["results"])}
"""
OWN_ENVIRONMENT = """

def pytest_cnnbench_environment(config, results):
    return {"mine": True}
"""


@pytest.mark.parametrize("environment_from", ["plugin", "conftest"])
def test_conftest_adds_a_field_to_the_environment_and_a_key_to_the_json(tiny_project, environment_from):
    conftest = tiny_project.path / "conftest.py"
    conftest.write_text(conftest.read_text() + UPDATES + (OWN_ENVIRONMENT if environment_from == "conftest" else ""))
    result = tiny_project.runpytest_subprocess(*FAST, "--cnn-threads=1", "--cnn-backend=eager",
                                               "--cnn-json=out.json", "--cnn-report=report.json")
    result.assert_outcomes(passed=1)
    for name in ("out.json", "report.json"):
        document = json.loads((tiny_project.path / name).read_text())
        assert document["ci_run"] == {"id": 42, "cells": 1}, name
        assert len(document["results"]) == 1 and document["format_version"] == 2  # the rest is the default's
        environment = document["environment"]
        assert environment["lab"] == "rack 3", name
        if environment_from == "plugin":
            assert environment["versions"]["python"] and environment["cpu_count"] >= 1  # default fields kept
        else:
            assert environment["mine"] is True and "versions" not in environment
