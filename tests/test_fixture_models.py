"""A model as a parametrized pytest fixture (the design card's third use), as users write it."""

from __future__ import annotations

import pytest

from conftest import FAST, load_results, shared_data_root

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

USER_CONFTEST = """
import pytest
import torch
import torch.nn as nn


def net(width):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


@pytest.fixture(params=["small", "wide"])
def cnn_model(request):
    return net(4 if request.param == "small" else 32)
"""

USER_TEST = """
import pytest

pytestmark = pytest.mark.cnnbench(dataset="synthetic", input_shape=(3, 16, 16))


def test_my_models(cnnbench, cnn_model):
    cnnbench.run()
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> pytest.Pytester:
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_mine=USER_TEST)
    pytester._monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*FAST, "--cnn-threads=1", *args)


def test_each_param_of_a_users_model_fixture_is_a_row_on_every_backend(user_project):
    result = run(user_project, "--cnn-backend=eager,ort", "--cnn-json=out.json")
    result.assert_outcomes(passed=4)
    rows = load_results(user_project.path / "out.json")
    assert sorted((r["model"], r["backend"]) for r in rows) == [
        ("small", "eager"), ("small", "ort"), ("wide", "eager"), ("wide", "ort")]
    assert all(r["status"] == "passed" and r["latency_ms"]["p50"] > 0 for r in rows)
    assert all(r["weights"] == "user" and r["dataset"] == "synthetic" for r in rows)
    # The models are the user's: their sizes differ, and no registered model ran.
    sizes = {r["model"]: r["artifact_mb"] for r in rows if r["backend"] == "eager"}
    assert sizes["wide"] > 4 * sizes["small"]
    table = [line.split()[0] for line in result.outlines if line.split() and line.split()[0] in
             ("small", "wide", "lenet", "resnet50", "alexnet", "googlenet")]
    assert sorted(table) == ["small", "small", "wide", "wide"]  # no registered model ran


def test_cnn_model_filters_fixture_params_like_registered_models(user_project):
    result = run(user_project, "--cnn-backend=eager", "--cnn-model=wide", "--collect-only", "-q")
    assert [line for line in result.outlines if "::test_my_models[" in line] == ["test_mine.py::test_my_models[wide-eager-bs1]"]
    result = run(user_project, "--cnn-backend=eager", "--cnn-model=tiny_typo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--cnn-model: unknown 'tiny_typo'; valid: all, lenet, resnet50, alexnet, googlenet, efficientnet_lite0, small, wide" in result.stderr.str()


@pytest.mark.parametrize("returned, expected", [
    ("'not a model'", "returned str, not a torch.nn.Module or a pytest_cnnbench.BuiltModel"),
    ("nn.Conv2d(3, 4, 3)", "the model returned (2, 4, 14, 14); a classifier must return logits of shape (batch, classes)"),
    ("nn.Linear(5, 10)", "the model fails on a batch of 2 inputs of shape (3, 16, 16)"),
])
def test_what_cannot_be_benchmarked_is_a_clear_error_naming_the_fixture(user_project, returned, expected):
    user_project.makeconftest(USER_CONFTEST + f"""

@pytest.fixture(params=["good", "bad"])
def cnn_model(request):
    return net(4) if request.param == "good" else {returned}
""")
    result = run(user_project, "--cnn-backend=eager", "--cnn-json=out.json")
    result.assert_outcomes(passed=1, errors=1)  # one bad model does not stop the good one
    rows = {r["model"]: r for r in load_results(user_project.path / "out.json")}
    assert rows["good"]["status"] == "passed" and rows["bad"]["status"] == "error"
    assert "cnn_model fixture (conftest.py:" in rows["bad"]["reason"] and "(param 'bad')" in rows["bad"]["reason"]
    assert expected in rows["bad"]["reason"]


def test_a_bare_module_needs_a_dataset(user_project):
    user_project.makepyfile(test_mine="""
def test_my_models(cnnbench):
    cnnbench.run()
""")
    result = run(user_project, "--cnn-backend=eager", "--cnn-json=out.json")
    result.assert_outcomes(errors=2)
    reason = load_results(user_project.path / "out.json")[0]["reason"]
    assert "no dataset to feed the model: mark the test with @pytest.mark.cnnbench(dataset=...) or run with --cnn-dataset" in reason


def test_a_built_model_carries_its_name_preprocessing_and_shapes(user_project):
    user_project.makeconftest(USER_CONFTEST + """
from pytest_cnnbench import BuiltModel


@pytest.fixture
def cnn_model():
    scale = lambda images: images.float() / 127.5 - 1.0
    return BuiltModel(net(8), scale, "trained", "my checkpoint", "minus-one-to-one", name="mynet",
                      input_shape=(3, 20, 20))
""")
    user_project.makepyfile(test_mine="""
import pytest

@pytest.mark.cnnbench(dataset="synthetic")
def test_my_models(cnnbench):
    cnnbench.run()
""")
    result = run(user_project, "--cnn-backend=eager,torchscript", "--cnn-json=out.json")
    result.assert_outcomes(passed=2)
    rows = load_results(user_project.path / "out.json")
    assert [(r["model"], r["weights"], r["weights_note"]) for r in rows] == [("mynet", "trained", "my checkpoint")] * 2


@pytest.mark.skipif(shared_data_root() is None, reason="needs the real MNIST files (../shared/data)")
def test_a_bare_module_on_real_mnist(user_project):
    user_project.makeconftest("""
import pytest
import torch
import torch.nn as nn

@pytest.fixture(params=["mlp"])
def cnn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
""")
    user_project.makepyfile(test_mine="""
import pytest

@pytest.mark.cnnbench(dataset="mnist")
def test_my_models(cnnbench):
    result = cnnbench.run()
    assert result["samples"] == 10000
""")
    result = run(user_project, "--cnn-backend=eager,ort", f"--cnn-data-root={shared_data_root()}", "--cnn-json=out.json")
    result.assert_outcomes(passed=2)
    rows = load_results(user_project.path / "out.json")
    assert {r["model"] for r in rows} == {"mlp"} and all(r["accuracy_valid"] for r in rows)
    assert rows[1]["agreement"]["rel_err"] < 1e-4


# -- the main job: self-checks apart, honest passes ------------------------------------------------
def test_selfchecks_run_only_with_cnn_selfcheck_and_then_alone(tiny_project):
    tiny_project.makepyfile(test_harness="""
import pytest

@pytest.mark.cnnbench_selfcheck
def test_overhead(cnnbench):
    pass
""")
    default = run(tiny_project, "--cnn-backend=eager", "--collect-only", "-q")
    assert [line for line in default.outlines if "::" in line] == ["test_suite.py::test_bench[tiny-eager-bs1]"]
    selfcheck = run(tiny_project, "--cnn-backend=eager", "--cnn-selfcheck", "--collect-only", "-q")
    assert [line for line in selfcheck.outlines if "::" in line] == ["test_harness.py::test_overhead[tiny-eager-bs1]"]


def test_accuracy_that_means_nothing_passes_with_a_note_unless_required(tiny_project):
    tiny_project.makepyfile(test_suite="""
def test_bench(cnnbench):
    cnnbench.run()
    cnnbench.check_accuracy(min_top1=0.99)
""")
    result = run(tiny_project, "--cnn-backend=eager", "--cnn-json=out.json")
    result.assert_outcomes(passed=1)
    (row,) = load_results(tiny_project.path / "out.json")
    assert row["accuracy_asserted"] is False and "accuracy not asserted: synthetic data has no real labels" in row["notes"]
    assert "passed: accuracy not asserted: synthetic data has no real labels" in result.stdout.str()
    strict = run(tiny_project, "--cnn-backend=eager", "--cnn-require-accuracy")
    strict.assert_outcomes(failed=1)
    assert "accuracy not asserted: synthetic data has no real labels (--cnn-require-accuracy)" in strict.stdout.str()


def test_a_bare_module_is_wrapped_by_one_rule_for_factories_and_fixtures():
    """process_cache.wrap_bare_module: a bare nn.Module (a registered factory's or a cnn_model fixture's) gets its
    dataset's preprocessing for bare modules (ImageNet folders hold PIL images), else uint8 scaled to [0, 1]."""
    import torch
    from PIL import Image

    from pytest_cnnbench.process_cache import scale_uint8, wrap_bare_module

    module = torch.nn.Identity()
    for dataset in ("mnist", "synthetic", None):
        built = wrap_bare_module(module, "module from cnn_model", dataset)
        assert (built.module, built.preprocess, built.preprocess_id, built.weights_kind, built.weights_note) == \
            (module, scale_uint8, "scale-uint8", "user", "module from cnn_model")
    on_imagenet = wrap_bare_module(module, "module returned by the factory", "imagenet")
    assert on_imagenet.preprocess_id.startswith("torchvision ImageClassification(")
    image = on_imagenet.preprocess(Image.new("RGB", (300, 280), (255, 0, 0)))
    assert tuple(image.shape) == (3, 224, 224) and image[0].mean() > 2  # resized, cropped and normalized
