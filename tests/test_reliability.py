"""Bad input gets a clear answer, one failing cell never sinks the run, no result is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import FAST, load_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*FAST, *args)


def add_to_conftest(pytester: pytest.Pytester, code: str) -> None:
    path = pytester.path / "conftest.py"
    path.write_text(path.read_text() + "\n" + code)


def cache_dir() -> Path:
    return Path(os.environ["CNNBENCH_CACHE_DIR"])


# -- bad options --------------------------------------------------------------------------
def test_json_path_whose_folder_is_a_file_is_a_usage_error(tiny_project):
    blocker = tiny_project.path / "not-a-folder"
    blocker.write_text("x")
    result = run(tiny_project, f"--cnn-json={blocker}/out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--cnn-json: folder {blocker} does not exist" in result.stderr.str()


@pytest.mark.parametrize("value", ["0", "-3", "fast"])
def test_bad_timing_values_are_usage_errors(tiny_project, value):
    result = run(tiny_project, f"--cnn-max-time={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--cnn-max-time: '{value}' is not a valid positive finite number" in result.stderr.str()


# -- bad caches ---------------------------------------------------------------------------
def _artifacts(kind: str) -> list[Path]:
    return sorted(p for p in (cache_dir() / kind).glob("*") if not p.name.endswith(".sha256"))


@pytest.mark.parametrize("kind, backend", [("onnx", "ort"), ("torchscript", "torchscript")])
@pytest.mark.parametrize("how", ["bytes-flipped", "garbage-with-matching-checksum"])
def test_corrupt_cached_artifact_is_detected_and_rebuilt(tiny_project, monkeypatch, kind, backend, how):
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", os.environ["CNNBENCH_CACHE_DIR"])
    out = tiny_project.path / "out.json"
    first = run(tiny_project, f"--cnn-backend={backend}", f"--cnn-json={out}")
    first.assert_outcomes(passed=1)
    (artifact,) = _artifacts(kind)
    data = bytearray(artifact.read_bytes())
    if how == "bytes-flipped":
        data[len(data) // 2] ^= 0xFF  # the checksum no longer matches
        artifact.write_bytes(bytes(data))
        expected = "checksum mismatch"
    else:
        import hashlib

        artifact.write_bytes(b"garbage" * 100)  # checksum matches, but it does not load
        Path(str(artifact) + ".sha256").write_text(hashlib.sha256(b"garbage" * 100).hexdigest())
        expected = "load"
    second = run(tiny_project, f"--cnn-backend={backend}", f"--cnn-json={out}")
    second.assert_outcomes(passed=1)
    warning = [line for line in second.outlines if "cached artifact" in line and "rebuilding it" in line]
    assert warning and expected in warning[0], second.stdout.str()[-2000:]
    (row,) = load_results(out)
    assert row["prepare_cached"] is False and row["status"] == "passed"
    assert row["agreement"]["rel_err"] < 1e-4  # the rebuilt artifact computes the right thing
    third = run(tiny_project, f"--cnn-backend={backend}", f"--cnn-json={out}")
    assert "rebuilding" not in third.stdout.str()
    assert load_results(out)[0]["prepare_cached"] is True


@pytest.mark.parametrize("backend", ["torchscript", "ort"])
def test_accuracy_logits_are_cached_per_artifact_and_computed_again_for_new_bytes(tiny_project, monkeypatch, backend):
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", os.environ["CNNBENCH_CACHE_DIR"])
    out = tiny_project.path / "out.json"

    def row() -> dict:
        result = run(tiny_project, f"--cnn-backend={backend}", f"--cnn-json={out}")
        result.assert_outcomes(passed=1)
        (only,) = load_results(out)
        return only

    first = row()
    assert first["accuracy_cached"] is False and len(_artifacts("logits")) == 1
    second = row()  # a warm run: the pass is skipped, its figures are the same
    assert second["accuracy_cached"] is True
    assert (second["top1"], second["agreement"]) == (first["top1"], first["agreement"])
    # The artifact is built again: its logits are those cached only if its bytes are the same.
    kind = "onnx" if backend == "ort" else "torchscript"
    (artifact,) = _artifacts(kind)
    before = artifact.read_bytes()
    artifact.unlink()
    Path(str(artifact) + ".sha256").unlink()
    third = row()
    assert third["prepare_cached"] is False
    assert third["accuracy_cached"] is (artifact.read_bytes() == before)
    assert len(_artifacts("logits")) == (1 if third["accuracy_cached"] else 2)
    assert third["top1"] == first["top1"]


def test_cache_write_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    from pytest_cnnbench.cache import ArtifactCache

    cache = ArtifactCache(tmp_path)
    started, release = threading.Event(), threading.Event()

    def slow_writer(path: Path) -> None:
        path.write_bytes(b"half")
        started.set()
        release.wait(10)
        path.write_bytes(b"the whole artifact")

    thread = threading.Thread(target=lambda: cache.store("onnx", "k", ".onnx", slow_writer))
    thread.start()
    started.wait(10)
    assert cache.lookup("onnx", "k", ".onnx") is None  # a reader never sees half a file
    release.set()
    thread.join()
    published = cache.lookup("onnx", "k", ".onnx")
    assert published.read_bytes() == b"the whole artifact"
    assert published.stat().st_mode & 0o777 == 0o666 & ~_current_umask()  # not mkstemp's 0600

    def failing_writer(path: Path) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        cache.store("onnx", "other", ".onnx", failing_writer)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["k.onnx", "k.onnx.sha256"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_concurrent_runs_share_one_cache(tiny_project):
    """Two pytest processes building the same artifacts at once both succeed."""
    args = [sys.executable, "-m", "pytest", *FAST, "--cnn-backend=ort,torchscript", "-q"]
    procs = [subprocess.Popen(args, cwd=tiny_project.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len(_artifacts("onnx")) == 1 and len(_artifacts("torchscript")) == 1


# -- failures isolated per cell --------------------------------------------------------------
MISBEHAVING_BACKENDS = '''
from pytest_cnnbench import register_backend
from pytest_cnnbench.backends.eager import EagerBackend


class _Wrapper:
    def __init__(self, inner, run):
        self.provider, self.artifact_bytes, self.cache_hit = "test", 0, False
        self._inner, self.run = inner, run

    def bind(self, batch):
        return self._inner.bind(batch)

    def close(self):
        self._inner.close()


class _Misbehaving(EagerBackend):
    def prepare(self, module, ctx):
        inner = super().prepare(module, ctx)
        return _Wrapper(inner, lambda batch: self.misrun(inner, batch))


@register_backend("wrongshape")
def wrongshape():
    class WrongShape(_Misbehaving):
        name = "wrongshape"

        def misrun(self, inner, batch):
            return inner.run(batch)[:, :3]  # drops classes

    return WrongShape()


@register_backend("oom")
def oom():
    import torch

    class Oom(_Misbehaving):
        name = "oom"

        def misrun(self, inner, batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\\n(detail that belongs in the report only)")

    return Oom()
'''


def test_wrong_shapes_and_out_of_memory_fail_only_their_cells(tiny_project):
    add_to_conftest(tiny_project, MISBEHAVING_BACKENDS)
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager,wrongshape,oom,ort", f"--cnn-json={out}")
    result.assert_outcomes(passed=2, failed=2)
    rows = {r["backend"]: r for r in load_results(out)}
    assert rows["eager"]["status"] == rows["ort"]["status"] == "passed"
    assert rows["wrongshape"]["status"] == "error"
    assert rows["wrongshape"]["reason"] == "RuntimeError: backend returned logits of shape (250, 3) for 250 samples; expected (250, 10)"
    assert rows["oom"]["status"] == "error"
    assert rows["oom"]["reason"] == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "detail that belongs in the report only" in result.stdout.str()  # full detail stays in the test report
    table = [line for line in result.outlines if line.startswith("tiny ")]
    assert sum("error: " in line for line in table) == 2


# -- nothing lost ---------------------------------------------------------------------------
SELF_INTERRUPTING_SUITE = '''
import os, signal

def test_bench(cnnbench):
    cnnbench.run()
    if cnnbench.spec.backend == "ort":
        # A run started in the background by a non-interactive shell inherits SIGINT ignored:
        # install Python's own handler, as an interactive run has it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.{signal})
'''


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_finished_cells_survive_interrupt_and_crash(tiny_project, sig):
    tiny_project.makepyfile(test_suite=SELF_INTERRUPTING_SUITE.format(signal=sig))
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager,torchscript,ort,trt", f"--cnn-json={out}")
    rows = {r["backend"]: r for r in load_results(out)}
    assert rows["eager"]["status"] == rows["torchscript"]["status"] == "passed"
    assert rows["eager"]["latency_ms"]["p50"] > 0
    assert "trt" not in rows  # never started
    if sig == "SIGINT":
        assert result.ret == pytest.ExitCode.INTERRUPTED
        assert rows["ort"]["status"] == "error" and "interrupted" in rows["ort"]["reason"]
        assert "cnnbench results" in result.stdout.str()  # the summary still prints what finished
        assert sum(line.startswith("tiny ") for line in result.outlines) == 3
    else:
        assert result.ret == -signal.SIGKILL
        assert "ort" not in rows or rows["ort"]["status"] is None


# -- pytest-xdist ---------------------------------------------------------------------------
def test_xdist_results_reach_table_and_json_every_cell_timed(tiny_project):
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "-n", "2", "--cnn-backend=eager,torchscript,ort,trt", "--cnn-batch-size=1,2", f"--cnn-json={out}")
    result.assert_outcomes(passed=6, skipped=2)
    rows = load_results(out)
    assert len(rows) == 8
    assert {(r["backend"], r["batch_size"]) for r in rows if r["status"] == "passed"} == {
        (b, n) for b in ("eager", "torchscript", "ort") for n in (1, 2)}
    assert sum(line.startswith("tiny ") for line in result.outlines) == 8
    # Timed by the harness, not by pytest-benchmark (which turns itself off under xdist).
    assert all(r["latency_ms"]["p50"] > 0 for r in rows if r["status"] == "passed")
    assert "timing under pytest-xdist" not in result.stdout.str()  # timed sections are serialized: no such warning


# -- resource hygiene ------------------------------------------------------------------------
def test_memory_returns_after_each_cell(tiny_project):
    out = tiny_project.path / "out.json"
    sizes = ",".join(str(n) for n in range(1, 9))
    result = run(tiny_project, "--cnn-backend=eager,torchscript,ort", f"--cnn-batch-size={sizes}", f"--cnn-json={out}")
    result.assert_outcomes(passed=24)
    after = [r["memory_mb"]["host_after"] for r in load_results(out)]
    # Allow for allocator warm-up in the first cells; after that, no cell-by-cell growth.
    settled = after[6:]
    assert max(settled) - min(settled) < 40, after
    assert settled[-1] - settled[0] < 25, after


def test_model_disagreeing_with_its_registration_fails_on_eager_too(tiny_project):
    """Eager's accuracy comes from the reference pass: it must check the class count like every cell."""
    add_to_conftest(tiny_project, '''
@register_model("liar", dataset="synthetic", input_shape=(3, 8, 8), num_classes=10)
def liar(ctx):
    import torch
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5))
''')
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager", "--cnn-model=liar", f"--cnn-json={out}")
    result.assert_outcomes(failed=1)
    (row,) = load_results(out)
    assert row["status"] == "error"
    assert row["reason"] == "RuntimeError: backend returned logits of shape (250, 5) for 250 samples; expected (250, 10)"
