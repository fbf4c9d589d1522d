"""Files the plugin did not just write (baselines, merge inputs, cache sidecars, tuning records)
get one clear error, or are discarded and rebuilt: never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pytest_cnnbench import between_sessions
from pytest_cnnbench.cache import ArtifactCache, CacheWarning

ROW = {"model": "tiny", "backend": "eager", "batch_size": 1, "precision": "fp32", "device": "cpu", "status": "passed",
       "dataset": "synthetic", "latency_ms": {"p50": 1.0}, "top1": 0.5}
GOOD = {"format_version": 1, "environment": {"cpu": "x"}, "results": [ROW]}

MALFORMED = {
    "environment a list": ({**GOOD, "environment": [1, 2]}, '"environment" must be an object, not list'),
    "environment missing": ({k: v for k, v in GOOD.items() if k != "environment"}, '"environment" must be an object'),
    "environment a string": ({**GOOD, "environment": "linux"}, '"environment" must be an object, not str'),
    "versions a list": ({**GOOD, "environment": {"versions": ["torch"]}}, '"environment.versions" must be an object'),
    "devices not strings": ({**GOOD, "environment": {"devices": [1]}}, '"environment.devices" must be a list of strings'),
    "merged entry bad": ({**GOOD, "environment": {"merged": [{"source": "a", "environment": 3}]}},
                         '"environment.merged[0].environment" must be an object'),
    "latency a list": ({**GOOD, "results": [{**ROW, "latency_ms": [1.0]}]}, "results[0].latency_ms must be an object"),
    "batch size a string": ({**GOOD, "results": [{**ROW, "batch_size": "one"}]}, "results[0].batch_size must be an integer"),
    "top1 a string": ({**GOOD, "results": [{**ROW, "top1": "50%"}]}, "results[0].top1 must be a number"),
    "source a number": ({**GOOD, "results": [{**ROW, "source": 3}]}, "results[0].source must be a string"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("files", [1, 2], ids=["one-file", "merge"])
def test_malformed_result_file_is_one_error_line_in_the_report_command(tmp_path, case, files):
    document, expected = MALFORMED[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    args = [str(path)] if files == 1 else [str(good), str(path)]
    run = subprocess.run([sys.executable, "-m", "pytest_cnnbench.report", *args], capture_output=True, text=True)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith(f"python -m pytest_cnnbench.report: error: {path}: malformed result file (")
    assert expected in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_good_result_file_still_reads(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(GOOD))
    run = subprocess.run([sys.executable, "-m", "pytest_cnnbench.report", str(path), str(path)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


def test_baseline_whose_environment_is_not_an_object_is_a_usage_error(tiny_project):
    baseline = tiny_project.path / "base.json"
    baseline.write_text(json.dumps({**GOOD, "environment": ["not", "an", "object"]}))
    result = tiny_project.runpytest_subprocess(f"--cnn-compare={baseline}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert '"environment" must be an object, not list' in err and "Traceback" not in err, err


# -- the cache's checksum sidecars --------------------------------------------------------------
@pytest.mark.parametrize("sidecar", [b"\xff\xfe\x00garbage", b"\x89PNG\r\n", "é".encode("latin-1") * 64])
def test_sidecar_that_is_not_text_is_discarded_and_rebuilt(tmp_path, sidecar):
    cache = ArtifactCache(tmp_path)
    path = cache.store("onnx", "k", ".bin", lambda tmp: tmp.write_bytes(b"model bytes"))
    Path(str(path) + ".sha256").write_bytes(sidecar)
    cache.content_id(path)  # names the entry without raising
    with pytest.warns(CacheWarning, match="checksum mismatch"):
        assert cache.lookup("onnx", "k", ".bin") is None
    assert not path.exists()
    built = []
    rebuilt, was_cached = cache.get_or_build("onnx", "k", ".bin", lambda tmp: built.append(tmp.write_bytes(b"new")))
    assert built and rebuilt.read_bytes() == b"new" and not was_cached
    assert cache.lookup("onnx", "k", ".bin") == rebuilt


# -- tuning records ----------------------------------------------------------------------------
WRONG_RECORDS = {
    "a list": [1, 2, 3],
    "sessions a number": {"what": "sessions", "sessions": 5},
    "sessions of strings": {"what": "sessions", "sessions": ["a", "b"]},
    "p50 a string": {"what": "sessions", "sessions": [{"session": "old", "p50": "fast"}]},
    "p10 a list": {"what": "pace", "sessions": [{"session": "old", "p10": [1]}]},
    "choice a list": {"what": "threads", "choice": [1, 2], "evidence": {}},
    "choice a bool": {"what": "threads", "choice": True, "evidence": {}},
}


@pytest.mark.parametrize("case", list(WRONG_RECORDS))
def test_tuning_record_of_the_wrong_shape_is_discarded(tmp_path, case):
    cache = ArtifactCache(tmp_path)
    parts = ("tiny", "cpu", "fp32", 1)
    text = json.dumps(WRONG_RECORDS[case])
    for what in ("sessions", "threads", "torchscript-variant", "pace"):
        key = between_sessions.record_key(what, *parts) if what != "pace" else between_sessions.record_key("pace")
        cache.store(between_sessions.KIND, key, ".json", lambda tmp: tmp.write_text(text))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert between_sessions.earlier_p50s(cache, parts) == []
        assert between_sessions.remembered_choice(cache, "threads", parts) is None
        assert between_sessions.remembered_choice(cache, "torchscript-variant", parts) is None
        assert between_sessions.earlier_paces(cache) == []
        between_sessions.add_session(cache, parts, {"p50": 2.0}, keep=5)  # rewrites a good record in its place
    assert any("not a tuning record" in str(w.message) for w in caught), [str(w.message) for w in caught]
    record = between_sessions.load(cache, between_sessions.record_key("sessions", *parts))
    assert [s["p50"] for s in record["sessions"]] == [2.0]


# -- a weights file given with --cnn-weights ----------------------------------------------------
@pytest.mark.parametrize("content, expected", [
    (b"not a pickle at all", "not a loadable state dict"),
    ("tensor-list", "expected a state dict"),
    ("wrong-keys", "does not fit lenet"),
])
def test_bad_lenet_weights_file_is_one_clear_error(tmp_path, content, expected):
    import torch

    from pytest_cnnbench.core import ModelContext
    from pytest_cnnbench.models.lenet import build_lenet

    path = tmp_path / "weights.pt"
    if content == "tensor-list":
        torch.save([torch.zeros(3)], path)
    elif content == "wrong-keys":
        torch.save({"conv9.weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    ctx = ModelContext("lenet", str(path), None, ArtifactCache(tmp_path / "cache"), "mnist", (1, 28, 28), 10,
                       download=False, log=lambda _: None)
    with pytest.raises(ValueError, match=expected) as info:
        build_lenet(ctx)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
