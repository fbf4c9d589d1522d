"""The plugin as users run it: options, parametrization, the table, the JSON file, skips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FAST, load_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*FAST, *args)


# -- options ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--cnn-backend", "tensorflow", ["--cnn-backend: unknown 'tensorflow'", "eager", "torchscript", "ort", "trt"]),
        ("--cnn-model", "vgg99", ["--cnn-model: unknown 'vgg99'", "lenet", "tiny"]),
        ("--cnn-device", "tpu", ["--cnn-device: unknown 'tpu'", "cpu, cuda, auto"]),
        ("--cnn-precision", "fp8", ["--cnn-precision: unknown 'fp8'", "fp32, fp16, int8, bf16"]),
        ("--cnn-batch-size", "1,0", ["--cnn-batch-size: '0' is not a positive integer"]),
        ("--cnn-batch-size", "eight", ["--cnn-batch-size: 'eight' is not a positive integer"]),
        ("--cnn-dataset", "cifar", ["--cnn-dataset: unknown 'cifar'", "mnist", "synthetic"]),
        ("--cnn-data-root", "/no/such/folder", ["--cnn-data-root: folder /no/such/folder does not exist"]),
        ("--cnn-json", "/no/such/folder/out.json", ["--cnn-json: folder /no/such/folder does not exist"]),
        ("--cnn-weights", "nope.pt", ["--cnn-weights: 'nope.pt' is neither"]),
    ],
)
def test_bad_option_is_a_usage_error_naming_value_and_choices(tiny_project, option, value, expected):
    result = run(tiny_project, f"{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    for text in expected:
        assert text in result.stderr.str()
    assert "cnnbench results" not in result.stdout.str()  # nothing was built or run


def test_ini_twins_apply_and_command_line_overrides(tiny_project):
    tiny_project.makeini("[pytest]\ncnn_backend = eager\ncnn_model = tiny\ncnn_batch_size = 2,3\n")
    result = run(tiny_project, "--collect-only", "-q")
    ids = [line for line in result.outlines if "::test_bench[" in line]
    assert ids == ["test_suite.py::test_bench[tiny-eager-bs2]", "test_suite.py::test_bench[tiny-eager-bs3]"]
    result = run(tiny_project, "--collect-only", "-q", "--cnn-backend=ort")
    assert [line for line in result.outlines if "::test_bench[" in line] == [
        "test_suite.py::test_bench[tiny-ort-bs2]", "test_suite.py::test_bench[tiny-ort-bs3]"]


def test_marker_narrows_cells_by_models_and_backends_and_empty_tests_are_deselected(tiny_project):
    tiny_project.makepyfile(test_marked="""
        import pytest

        @pytest.mark.cnnbench(models=["tiny"], backends=["ort"])
        def test_tiny_on_ort(cnnbench):
            pass

        @pytest.mark.cnnbench(models=["lenet"], backends=["eager"])
        def test_lenet_on_eager(cnnbench):
            pass
    """)

    def collected(*options: str) -> tuple[list[str], list[str]]:
        lines = run(tiny_project, "--collect-only", "-q", *options).outlines
        return [line for line in lines if "::test_" in line], lines

    # Both models and both backends are selected, so only the markers narrow the cells.
    ids, _ = collected("--cnn-model=tiny,lenet", "--cnn-backend=eager,ort")
    assert [i for i in ids if i.startswith("test_marked.py")] == [
        "test_marked.py::test_tiny_on_ort[tiny-ort-bs1]", "test_marked.py::test_lenet_on_eager[lenet-eager-bs1]"]
    assert sorted(i for i in ids if i.startswith("test_suite.py")) == [  # unmarked: every cell
        "test_suite.py::test_bench[lenet-eager-bs1]", "test_suite.py::test_bench[lenet-ort-bs1]",
        "test_suite.py::test_bench[tiny-eager-bs1]", "test_suite.py::test_bench[tiny-ort-bs1]"]
    # The options narrow further: a marked test left without cells is deselected.
    ids, lines = collected("--cnn-model=tiny", "--cnn-backend=eager,ort")
    assert [i for i in ids if i.startswith("test_marked.py")] == ["test_marked.py::test_tiny_on_ort[tiny-ort-bs1]"]
    assert any("1 deselected" in line for line in lines)


def test_marker_with_unknown_model_is_a_collection_error(tiny_project):
    tiny_project.makepyfile(test_marked="""
        import pytest

        @pytest.mark.cnnbench(models=["nosuchnet"])
        def test_x(cnnbench):
            pass
    """)
    result = run(tiny_project)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["test_marked.py::test_x: @pytest.mark.cnnbench: unknown model 'nosuchnet'; valid models: *lenet*"])
    assert "cnnbench results" not in result.stdout.str()


# -- a whole run: table, JSON, skip reasons, errors --------------------------------------
def test_run_prints_table_and_writes_json(tiny_project):
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager,torchscript,ort,trt", "--cnn-batch-size=1,4", f"--cnn-json={out}")
    result.assert_outcomes(passed=6, skipped=2)
    text = result.stdout.str()
    assert "cnnbench results" in text
    assert "torch " in text and "onnxruntime " in text  # the header names the versions
    table = [line.split() for line in result.outlines if line.startswith("tiny ")]
    assert [(row[1], row[4]) for row in table] == [
        ("eager", "1"), ("torchscript", "1"), ("ort", "1"), ("trt", "1"),
        ("eager", "4"), ("torchscript", "4"), ("ort", "4"), ("trt", "4")]

    data = json.loads(out.read_text())
    assert data["format_version"] == 2
    assert data["environment"]["versions"]["torch"]
    results = data["results"]
    assert len(results) == 8
    for r in results:
        assert set(r) >= {"model", "backend", "device", "precision", "batch_size", "dataset", "samples", "top1", "top5",
                          "latency_ms", "throughput_ips", "memory_mb", "prepare_s", "status", "reason"}
        assert r["device"] == "cpu" and r["dataset"] == "synthetic"
    measured = [r for r in results if r["backend"] != "trt"]
    for r in measured:
        lat = r["latency_ms"]
        assert r["status"] == "passed" and r["samples"] == 256
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] * 1000 / lat["p50"])
        assert r["memory_mb"]["host_peak"] > 0 and r["prepare_s"] >= 0
        assert 0 <= r["top1"] <= 1 and r["accuracy_valid"] is False  # synthetic labels mean nothing
        assert r["agreement"]["rel_err"] < 1e-4
    # Every backend saw the same logits as eager, so the same (meaningless) top-1.
    assert len({r["top1"] for r in measured}) == 1


def test_gpu_only_cells_skip_with_reason_in_table_and_json(tiny_project):
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager,trt", "--cnn-device=cuda", f"--cnn-json={out}")
    result.assert_outcomes(skipped=2)
    rows = {r["backend"]: r for r in load_results(out)}
    assert rows["trt"]["status"] == "skipped"
    assert "CUDA" in rows["trt"]["reason"] or "torch_tensorrt" in rows["trt"]["reason"]
    assert rows["eager"]["status"] == "skipped"
    assert "skipped: " in result.stdout.str()


def test_failing_backend_fails_only_its_cell(tiny_project):
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager,broken,ort", f"--cnn-json={out}")
    result.assert_outcomes(passed=2, failed=1)
    rows = {r["backend"]: r for r in load_results(out)}
    assert rows["broken"]["status"] == "error"
    assert rows["broken"]["reason"] == "RuntimeError: compiler exploded on purpose"
    assert rows["eager"]["status"] == rows["ort"]["status"] == "passed"
    assert any(line.startswith("tiny ") and "error: RuntimeError: compiler exploded" in line for line in result.outlines)


def test_failed_assertion_keeps_figures(tiny_project):
    tiny_project.makepyfile(test_suite="""
        def test_bench(cnnbench):
            result = cnnbench.run()
            assert result["latency_ms"]["p50"] < 0, "impossible latency bound"
    """)
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager", f"--cnn-json={out}")
    result.assert_outcomes(failed=1)
    (row,) = load_results(out)
    assert row["status"] == "failed" and "impossible latency bound" in row["reason"]
    assert row["latency_ms"]["p50"] > 0


def test_a_cell_is_measured_once_and_new_companions_later_are_an_error(tiny_project):
    tiny_project.makepyfile(test_suite="""
        import pytest

        def test_bench(cnnbench):
            first = cnnbench.run(companions={"idle": lambda: None})
            assert cnnbench.run() is first and cnnbench.run(companions={"idle": lambda: 1}) is first
            assert cnnbench.inputs.batch.shape[0] == 1 and len(cnnbench.inputs.labels) == len(cnnbench.inputs.images)
            with pytest.raises(ValueError, match="measured this cell with companions .'idle'.; a cell is measured once"):
                cnnbench.run(companions={"other": lambda: None})
    """)
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager", f"--cnn-json={out}")
    result.assert_outcomes(passed=1)
    (row,) = load_results(out)
    assert list(row["companions_ms"]) == ["idle"]


def test_pytest_benchmark_keeps_working_and_carries_figures(tiny_project):
    out = tiny_project.path / "bench.json"
    result = run(tiny_project, "--cnn-backend=ort", f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]["cnnbench"]
    assert info["backend"] == "ort" and info["latency_ms"]["p50"] > 0
    # The same timed rounds feed both reports.
    assert bench["stats"]["median"] * 1000 == pytest.approx(info["latency_ms"]["p50"])


def test_benchmark_disable_still_measures_accuracy(tiny_project):
    out = tiny_project.path / "out.json"
    result = run(tiny_project, "--cnn-backend=eager", "--benchmark-disable", f"--cnn-json={out}")
    result.assert_outcomes(passed=1)
    (row,) = load_results(out)
    assert row["latency_ms"] is None and row["samples"] == 256


# -- cheap import -------------------------------------------------------------------------
def test_help_and_collection_do_not_import_heavy_modules(tiny_project):
    tiny_project.makeconftest(
        (tiny_project.path / "conftest.py").read_text()
        + "\nimport sys\n\ndef pytest_unconfigure(config):\n"
        "    heavy = sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'torchvision') if m in sys.modules)\n"
        "    print('HEAVY-MODULES:', ','.join(heavy) or 'none')\n"
    )
    for args in (["--help"], ["--collect-only", "-q"]):
        result = tiny_project.runpytest_subprocess(*args)
        assert "HEAVY-MODULES: none" in result.stdout.str(), (args, result.stdout.str()[-500:])


def test_plugin_import_is_light():
    code = "import sys, pytest_cnnbench.plugin; print(sorted(m for m in ('torch','onnxruntime','tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
