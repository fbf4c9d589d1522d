"""Reduced precision and the newer CPU backends: ort int8, inductor, openvino.

Quick, real runs: the tiny model in-process or in a subprocess, and LeNet on the real MNIST
test set in one subprocess run (every new backend and precision, all 10,000 digits).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from conftest import FAST, REPO, load_results, shared_data_root

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DATA = shared_data_root()
needs_mnist = pytest.mark.skipif(DATA is None, reason="real MNIST not found (set CNNBENCH_DATA_ROOT or put it in ../shared/data)")
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
                                    reason="openvino/nncf not installed: pip install 'pytest-cnnbench[openvino]'")
ONE_THREAD = "--cnn-threads=1"  # no thread probe: one preparation per cell


# -- options ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--cnn-calibration", "kl", ["--cnn-calibration: unknown 'kl'", "minmax, entropy, percentile"]),
        ("--cnn-calibration-images", "0", ["--cnn-calibration-images: '0' is not a positive integer"]),
        ("--cnn-calibration-images", "many", ["--cnn-calibration-images: 'many' is not a positive integer"]),
        ("--cnn-inductor-mode", "fast", ["--cnn-inductor-mode: unknown 'fast'",
                                         "default, reduce-overhead, max-autotune-no-cudagraphs, max-autotune"]),
    ],
)
def test_bad_precision_option_is_a_usage_error(tiny_project, option, value, expected):
    result = tiny_project.runpytest_subprocess(*FAST, f"{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    for text in expected:
        assert text in result.stderr.str()


def test_precision_options_have_ini_twins(tiny_project):
    tiny_project.makeini("[pytest]\ncnn_model = tiny\ncnn_calibration = wrong\n")
    result = tiny_project.runpytest_subprocess(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "--cnn-calibration: unknown 'wrong'" in result.stderr.str()
    tiny_project.makeini("[pytest]\ncnn_model = tiny\ncnn_calibration = wrong\ncnn_inductor_mode = max-autotune\n")
    result = tiny_project.runpytest_subprocess(*FAST, "--cnn-calibration=entropy", "--collect-only", "-q")
    assert result.ret == 0  # the command line wins over the ini


# -- the int8 scheme and the cache -----------------------------------------------------------
def test_scheme_follows_the_cpu_not_an_assumption():
    from pytest_cnnbench.backends.ort_quant import scheme_for

    avx2 = scheme_for("x86_64", frozenset({"avx2", "fma"}))
    assert (avx2.activations, avx2.reduce_range) == ("u8", True) and "without VNNI" in avx2.describe()
    vnni = scheme_for("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert (vnni.activations, vnni.reduce_range) == ("u8", False)
    assert scheme_for("x86_64", frozenset({"avx2", "avx_vnni"})).reduce_range is False
    assert scheme_for("aarch64", frozenset({"asimd"})).activations == "s8"


def _tiny_ctx(tmp_path, **changes):
    import torch

    from pytest_cnnbench.backends.base import PrepareContext
    from pytest_cnnbench.cache import ArtifactCache

    calibration = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    values = dict(device="cpu", precision="int8", batch_size=1, input_shape=(3, 16, 16), cache=ArtifactCache(tmp_path),
                  model_key="tiny-key", calibration=calibration, calibration_id="cal-a", threads=1,
                  calibration_method="minmax", calibration_note="16 test images")
    values.update(changes)
    return PrepareContext(**values)


def _tiny_module():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()


def test_int8_model_is_cached_by_calibration_images_and_method(tmp_path):
    import torch

    from pytest_cnnbench.backends.ort import OrtBackend

    module, backend = _tiny_module(), OrtBackend()
    prepared = backend.prepare(module, _tiny_ctx(tmp_path))
    assert prepared.cache_hit is False and prepared.provider == "CPUExecutionProvider"
    assert prepared.calibration == "16 test images, minmax" and "per-channel" in prepared.quantization
    x = torch.rand(4, 3, 16, 16)
    with torch.inference_mode():
        reference = module(x)
    rel = float((prepared.run(x) - reference).abs().max() / reference.abs().max())
    assert 0 < rel < 5e-2  # int8 rounding, not a broken model (nor an fp32 one)
    assert backend.prepare(module, _tiny_ctx(tmp_path)).cache_hit is True
    for change in ({"calibration_method": "entropy"}, {"calibration_method": "percentile"}, {"calibration_id": "cal-b"},
                   {"calibration": torch.rand(8, 3, 16, 16)}, {"model_key": "other-weights"}):
        assert backend.prepare(module, _tiny_ctx(tmp_path, **change)).cache_hit is False, change
    assert len(list((tmp_path / "ort-int8").glob("*.onnx"))) == 6


@needs_mnist
def test_mnist_calibrates_on_training_images_apart_from_the_test_set(tmp_path):
    import torch

    from pytest_cnnbench.cache import ArtifactCache
    from pytest_cnnbench.calibration import calibration_set
    from pytest_cnnbench.core import DatasetContext
    from pytest_cnnbench.datasets.mnist import MnistDataset

    ctx = DatasetContext("mnist", DATA, ArtifactCache(tmp_path), (1, 28, 28), 10, download=False)
    test = MnistDataset.from_context(ctx, "test")
    images = test.images.float()
    chosen = calibration_set(test, lambda x: x.float(), "raw", images, 32)
    assert chosen.held_out and chosen.note == "32 MNIST training images" and chosen.images.shape == (32, 1, 28, 28)
    flat_test = {bytes(row) for row in test.images.flatten(1).numpy()}
    assert not any(bytes(row) in flat_test for row in chosen.images.to(torch.uint8).flatten(1).numpy())
    assert calibration_set(test, lambda x: x.float(), "raw", images, 16).id != chosen.id


def test_a_folder_without_a_split_lends_evaluation_images_and_says_so():
    import torch

    from pytest_cnnbench.calibration import calibration_set

    class Folder:  # an ImageNet-style folder: no calibration_source
        name, content_id = "imagenet", "abc"

    images = torch.arange(100.0).reshape(100, 1, 1, 1)
    chosen = calibration_set(Folder(), lambda x: x, "pre", images, 8)
    assert not chosen.held_out and len(chosen.images) == 8
    assert chosen.note.startswith("8 of the 100 evaluation images (imagenet has no separate calibration split")
    assert calibration_set(Folder(), lambda x: x, "pre", images, 8).id == chosen.id  # seeded: same pick


# -- the tiny model, every new backend, in a subprocess -----------------------------------------
def test_tiny_model_on_every_cpu_precision_backend(tiny_project):
    out = tiny_project.path / "out.json"
    backends = "eager,ort,inductor" + (",openvino" if importlib.util.find_spec("openvino") else "")
    result = tiny_project.runpytest_subprocess(*FAST, ONE_THREAD, f"--cnn-backend={backends}", "--cnn-precision=fp32,int8",
                                               "--cnn-calibration-images=16", f"--cnn-json={out}", timeout=600)
    assert result.ret == 0, result.stdout.str()[-3000:]
    rows = {(r["backend"], r["precision"]): r for r in load_results(out)}
    measured = {key for key, r in rows.items() if r["status"] == "passed"}
    expected = {("eager", "fp32"), ("ort", "fp32"), ("inductor", "fp32"), ("ort", "int8")}
    if "openvino" in backends:
        expected |= {("openvino", "fp32"), ("openvino", "int8")}
    assert measured == expected
    for key in expected:
        r = rows[key]
        assert r["latency_ms"]["p50"] > 0 and r["delta_top1_pp"] is not None and r["delta_top5_pp"] is not None
        if key[1] == "int8":
            assert r["calibration"].startswith("16 synthetic images (seed 1, not the evaluated ones), minmax")
            assert 1e-4 < r["agreement"]["rel_err"] < 5e-2 and r["quantization"]
        else:
            assert r["agreement"]["rel_err"] < 1e-4 and r["calibration"] is None
    assert rows[("inductor", "fp32")]["provider"] == "inductor (mode default, freezing)"
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # torch's compile caches went into the plugin's cache folder
        assert any((Path(os.environ["CNNBENCH_CACHE_DIR"]) / "inductor").rglob("*.so"))
    assert "PT2E" in rows[("inductor", "int8")]["reason"] and "no int8" in rows[("eager", "int8")]["reason"]


@needs_openvino
def test_openvino_reasons():
    from pytest_cnnbench.backends.openvino import OpenVinoBackend, cpu_capabilities

    backend = OpenVinoBackend()
    assert "runs on the CPU" in backend.unavailable_reason("cuda", "fp32")
    assert backend.unavailable_reason("cpu", "fp32") is None and backend.unavailable_reason("cpu", "int8") is None
    fp16 = backend.unavailable_reason("cpu", "fp16")
    assert (fp16 is None) == ("FP16" in cpu_capabilities())  # real fp16 where the CPU has it, a reason elsewhere


def test_openvino_missing_skips_with_the_install_hint(tiny_project):
    tiny_project.makeconftest(
        (tiny_project.path / "conftest.py").read_text()
        + "\nimport sys\nsys.modules['openvino'] = None  # as if not installed\n")
    out = tiny_project.path / "out.json"
    result = tiny_project.runpytest_subprocess(*FAST, "--cnn-backend=openvino", "--cnn-precision=fp32,int8", f"--cnn-json={out}")
    assert result.ret == 0
    for row in load_results(out):
        assert row["status"] == "skipped" and "pip install 'pytest-cnnbench[openvino]'" in row["reason"]


def test_inductor_caches_go_to_the_plugin_cache(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from pytest_cnnbench.backends.inductor import point_caches_at

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch sets by itself
    assert point_caches_at(str(tmp_path / "inductor")) == str(tmp_path / "inductor")
    assert (tmp_path / "inductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # a user's choice stays
    assert point_caches_at(str(tmp_path / "inductor")) == str(tmp_path / "mine")


# -- LeNet on the real MNIST: the suite as users run it ---------------------------------------
@needs_mnist
def test_lenet_int8_and_new_backends_on_real_mnist(pytester: pytest.Pytester, real_data_cache, monkeypatch):
    """Every new row on all 10,000 test digits: int8 within 0.5 pt of fp32 (the suite asserts it),
    inductor and openvino fp32 equal to eager, int8 agreeing with it."""
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(real_data_cache))
    pytester.copy_example(str(REPO / "suites" / "test_lenet_mnist.py"))
    out = pytester.path / "out.json"
    backends = "eager,ort,inductor" + (",openvino" if importlib.util.find_spec("openvino") else "")
    result = pytester.runpytest_subprocess(
        *FAST, ONE_THREAD, "test_lenet_mnist.py", "--cnn-model=lenet", f"--cnn-backend={backends}",
        "--cnn-precision=fp32,int8", f"--cnn-data-root={DATA}", f"--cnn-json={out}", timeout=900)
    rows = {(r["backend"], r["precision"]): r for r in load_results(out)}
    assert result.ret == 0, {k: r["reason"] for k, r in rows.items() if r["status"] != "passed"}
    reference = rows[("eager", "fp32")]
    for (backend, precision), r in rows.items():
        if r["status"] == "skipped":
            assert precision == "int8" and backend in ("eager", "inductor"), r
            continue
        assert r["samples"] == 10000 and r["accuracy_valid"] is True
        if precision == "fp32":
            assert r["top1"] == reference["top1"] and r["agreement"]["top1_agree"] == 1.0
        else:
            assert r["calibration"].startswith("64 MNIST training images, minmax")
            assert r["delta_top1_pp"] >= -0.5 and r["agreement"]["top1_agree"] >= 0.995
