"""The registries: built-ins first, whatever imports first; a name registered twice is an error
naming both registrations, unless the second says replace=True, and then the user's entry runs."""

from __future__ import annotations

import pytest

from conftest import FAST, load_results

from pytest_cnnbench import registry

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# A user's model under a built-in's name; it leaves a file behind when it is built, so the
# test sees whose model ran.
USERS_LENET = """
from pathlib import Path

{prelude}
from pytest_cnnbench import register_model


@register_model("lenet", dataset="synthetic", input_shape=(3, 16, 16), num_classes=10{replace})
def my_lenet(ctx):
    import torch

    Path(__file__).with_name("users-lenet-built").write_text("yes")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10))
"""
SUITE = "def test_bench(cnnbench):\n    cnnbench.run()\n"
RUN = [*FAST, "--cnn-threads=1", "--cnn-backend=eager", "--cnn-model=lenet", "--cnn-json=out.json"]


def users_lenet(replace: bool, prelude: str = "") -> str:
    return USERS_LENET.format(prelude=prelude, replace=", replace=True" if replace else "")


def registration_line(conftest) -> int:
    """The line of the decorator in a written conftest, as the error should name it."""
    return next(i for i, line in enumerate(conftest.read_text().splitlines(), 1) if line.startswith("@register_model"))


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> pytest.Pytester:
    pytester._monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return pytester


def test_rootdir_conftest_reusing_a_builtin_name_is_a_usage_error_naming_both(project):
    conftest = project.makeconftest(users_lenet(replace=False))
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest_subprocess(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stderr.str()
    assert "model 'lenet' is registered twice" in errors
    assert "pytest_cnnbench.models.lenet:build_lenet (built-in)" in errors  # the existing entry
    assert f"conftest:my_lenet (conftest.py:{registration_line(conftest)})" in errors  # the new one, by file and line
    assert "replace=True" in errors
    assert "Traceback" not in errors and "registry.py" not in errors, errors
    assert not (project.path / "users-lenet-built").exists()


@pytest.mark.parametrize("placement", ["rootdir conftest", "conftest importing a backend first", "sub-directory conftest"])
def test_replace_true_runs_the_users_model_wherever_it_is_registered(project, placement):
    if placement == "sub-directory conftest":
        project.mkpydir("sub")
        (project.path / "sub" / "conftest.py").write_text(users_lenet(replace=True))
        (project.path / "sub" / "test_suite.py").write_text(SUITE)
        marker = project.path / "sub" / "users-lenet-built"
    else:
        # Importing a built-in backend's module once entered the built-ins after the user's model.
        prelude = "import pytest_cnnbench.backends.eager" if "backend" in placement else ""
        project.makeconftest(users_lenet(replace=True, prelude=prelude))
        project.makepyfile(test_suite=SUITE)
        marker = project.path / "users-lenet-built"
    result = project.runpytest_subprocess(*RUN)
    result.assert_outcomes(passed=1)
    assert marker.read_text() == "yes"
    (row,) = load_results(project.path / "out.json")
    # The built-in LeNet would be trained MNIST weights on MNIST.
    assert (row["model"], row["weights"], row["dataset"]) == ("lenet", "user", "synthetic")


def test_sub_directory_conftest_reusing_a_builtin_name_fails_naming_both(project):
    project.mkpydir("sub")
    conftest = project.path / "sub" / "conftest.py"
    conftest.write_text(users_lenet(replace=False))
    (project.path / "sub" / "test_suite.py").write_text(SUITE)
    result = project.runpytest_subprocess(*RUN)
    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.str()
    assert ("model 'lenet' is registered twice: by pytest_cnnbench.models.lenet:build_lenet (built-in) and by "
            f"sub.conftest:my_lenet (sub/conftest.py:{registration_line(conftest)})") in output
    assert not (project.path / "sub" / "users-lenet-built").exists()


def test_builtins_come_first_and_a_second_registration_needs_replace():
    models = registry.Registry("model", registry.BUILTINS["model"])

    def first(ctx):
        return "first"

    def second(ctx):
        return "second"

    models.register("tinynet", first, dataset="synthetic")
    assert models.names()[:len(registry.BUILTINS["model"])] == list(registry.BUILTINS["model"])
    with pytest.raises(registry.RegistrationError, match=r"model 'tinynet' is registered twice: by .*:.*first .* by .*second"):
        models.register("tinynet", second, dataset="synthetic")
    assert models.create("tinynet", None) == "first"
    models.register("tinynet", first, dataset="synthetic")  # the same function again (a re-imported module) is no conflict
    models.register("tinynet", second, replace=True, dataset="other")
    assert models.create("tinynet", None) == "second" and models.get("tinynet").meta["dataset"] == "other"


def test_every_builtin_names_a_function_that_exists():
    import pytest_cnnbench.backends.eager  # noqa: F401  (a package's submodules must not shadow a target)
    import pytest_cnnbench.datasets.mnist  # noqa: F401
    import pytest_cnnbench.models.lenet  # noqa: F401

    for kind, table in registry.BUILTINS.items():
        for name, (target, _) in table.items():
            factory = registry.import_target(target)
            assert callable(factory) and not isinstance(factory, type(pytest)), (kind, name, target)


def test_resolve_is_the_one_path_from_a_model_name_to_a_model():
    """models.resolve: a registered name, a zoo name or a fixture's param becomes one typed record; an
    unknown name is one UnknownModelError with close matches and how to add a model."""
    from pytest_cnnbench import models

    lenet = models.resolve("lenet")
    assert (lenet.name, lenet.source, lenet.dataset) == ("lenet", "registry", "mnist")
    assert lenet.entry is registry.models.get("lenet")
    own = models.resolve("small", fixture_params={"small", "wide"})
    assert (own.source, own.entry, own.dataset) == ("fixture", None, None)
    zoo = models.resolve("torchvision:resnet18")
    assert (zoo.source, zoo.from_zoo, zoo.dataset) == ("torchvision", True, "imagenet")
    assert zoo.entry.meta["input_shape"] == (3, 224, 224)
    with pytest.raises(registry.UnknownModelError,
                       match=r"^unknown model 'lenett' \(close: .*lenet.*\); valid models: lenet, .*, torchvision:<name>, "
                             r"timm:<name>; add a model with @pytest_cnnbench.register_model"):
        models.resolve("lenett")
    with pytest.raises(registry.UnknownModelError, match="'smal' .*close: small"):
        models.resolve("smal", fixture_params={"small"})
    with pytest.raises(registry.UnknownModelError, match="a wildcard, not one model"):
        models.resolve("torchvision:resnet*")
    with pytest.raises(registry.UnknownModelError, match="is not a torchvision classification model"):
        models.resolve("torchvision:resnet_18")  # the zoo's own message, through the same error type
    assert models.expand("torchvision:resnet1*") == ["torchvision:resnet101", "torchvision:resnet152", "torchvision:resnet18"]
    with pytest.raises(registry.UnknownModelError, match="'le net' is not a model name"):
        models.expand("le net")
