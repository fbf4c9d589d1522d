"""LeNet on the real MNIST files: the reader, training cache, and the suite as users run it."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from conftest import FAST, REPO, load_results, shared_data_root

DATA = shared_data_root()
needs_mnist = pytest.mark.skipif(DATA is None, reason="real MNIST not found (set CNNBENCH_DATA_ROOT or put it in ../shared/data)")


@needs_mnist
def test_reader_reads_the_real_test_set():
    from pytest_cnnbench.datasets.mnist import MnistDataset

    folder = DATA / "mnist"
    ds = MnistDataset(folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    assert len(ds) == 10000 and tuple(ds.images.shape) == (10000, 1, 28, 28)
    counts = ds.labels.bincount(minlength=10)
    assert counts.sum() == 10000 and int(counts.min()) > 800  # every digit is there in number


@needs_mnist
@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-count"])
def test_damaged_idx_file_is_an_error_naming_it(tmp_path, damage):
    from pytest_cnnbench.datasets.errors import DatasetError
    from pytest_cnnbench.datasets.mnist import MnistDataset

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DATA / "mnist" / name, tmp_path / name)
    images, labels = tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncate":
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
        bad = images
    elif damage == "garbage":
        labels.write_bytes(b"this is not gzip data at all")
        bad = labels
    else:
        raw = gzip.decompress(labels.read_bytes())
        header = bytearray(raw[:8])
        header[4:8] = (9999).to_bytes(4, "big")
        labels.write_bytes(gzip.compress(bytes(header) + raw[8:8 + 9999]))
        bad = None
    with pytest.raises(DatasetError) as excinfo:
        MnistDataset(images, labels)
    message = str(excinfo.value)
    if bad is not None:
        assert str(bad) in message
    else:
        assert "10000 images" in message and "9999 labels" in message


def test_missing_files_without_download_name_what_was_searched(tmp_path):
    from pytest_cnnbench.cache import ArtifactCache
    from pytest_cnnbench.core import DatasetContext
    from pytest_cnnbench.datasets.errors import DatasetError
    from pytest_cnnbench.datasets.mnist import MnistDataset

    ctx = DatasetContext("mnist", tmp_path, ArtifactCache(tmp_path / "cache"), (1, 28, 28), 10, download=False)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz.*not found.*downloads are disabled"):
        MnistDataset.from_context(ctx, "test")
    # A data root that is also the fallback (the cache's data folder) is searched, and named, once.
    same = DatasetContext("mnist", tmp_path / "cache" / "data", ArtifactCache(tmp_path / "cache"), (1, 28, 28), 10,
                          download=False)
    with pytest.raises(DatasetError) as info:
        MnistDataset.from_context(same, "test")
    assert str(info.value).count(f"{tmp_path / 'cache' / 'data'}/mnist") == 1, info.value


@needs_mnist
def test_torchvision_layout_is_found(tmp_path):
    from pytest_cnnbench.datasets.mnist import find_file

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz", raw)
    assert find_file(tmp_path, "t10k-labels-idx1-ubyte") == raw / "t10k-labels-idx1-ubyte.gz"


@needs_mnist
def test_lenet_suite_end_to_end(pytester: pytest.Pytester, real_data_cache, monkeypatch):
    """The issue's acceptance run: three real backends, all 10,000 test images, top-1 >= 0.98."""
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(real_data_cache))
    pytester.copy_example(str(REPO / "suites" / "test_lenet_mnist.py"))
    out = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        *FAST, "test_lenet_mnist.py", "--cnn-model=lenet", "--cnn-backend=eager,torchscript,ort",
        f"--cnn-data-root={DATA}", f"--cnn-json={out}", timeout=900,
    )
    result.assert_outcomes(passed=3)
    rows = load_results(out)
    assert [r["backend"] for r in rows] == ["eager", "torchscript", "ort"]
    for r in rows:
        assert r["samples"] == 10000 and r["top1"] >= 0.98 and r["accuracy_valid"] is True
        assert r["weights"] == "trained"
    assert sum(1 for line in result.outlines if line.startswith("lenet ")) == 3


@needs_mnist
def test_lenet_trains_once_then_loads_from_cache(tmp_path):
    import torch

    from pytest_cnnbench.cache import ArtifactCache
    from pytest_cnnbench.core import ModelContext
    from pytest_cnnbench.models.lenet import build_lenet

    def build():
        log: list[str] = []
        ctx = ModelContext("lenet", "pretrained", DATA, ArtifactCache(tmp_path), "mnist", (1, 28, 28), 10, download=False, log=log.append)
        return build_lenet(ctx), log

    first, log1 = build()
    assert any("training LeNet" in line for line in log1)
    assert any("test accuracy after training" in line for line in log1)
    second, log2 = build()
    assert not any("training" in line for line in log2)
    assert second.weights_kind == "trained"
    for (name, a), (_, b) in zip(first.module.state_dict().items(), second.module.state_dict().items()):
        assert torch.equal(a, b), name


class _Captured(Exception):
    pass


@needs_mnist
@pytest.mark.parametrize("weights", ["random", "pretrained"])
def test_lenet_initial_weights_come_from_the_seed_not_the_process_rng(tmp_path, monkeypatch, weights):
    """Another test run first (or another suite) must not change the weights LeNet starts from:
    trained weights are cached under the recipe, so they must follow from it."""
    import importlib

    import torch

    from pytest_cnnbench.cache import ArtifactCache
    from pytest_cnnbench.core import ModelContext

    lenet = importlib.import_module("pytest_cnnbench.models.lenet")  # the package's `lenet` is its registry entry

    def initial_weights(process_seed: int) -> dict:
        captured = {}

        def capture(model, *args, **kwargs):  # stop before training: the start is what is checked
            captured.update({k: v.clone() for k, v in model.state_dict().items()})
            raise _Captured

        monkeypatch.setattr(lenet, "train", capture)
        torch.manual_seed(process_seed)
        ctx = ModelContext("lenet", weights, DATA, ArtifactCache(tmp_path / str(process_seed)), "mnist", (1, 28, 28), 10,
                           download=False, log=lambda _: None)
        try:
            built = lenet.build_lenet(ctx)
        except _Captured:
            pass
        else:
            captured.update(built.module.state_dict())
        after = torch.rand(1)
        torch.manual_seed(process_seed)
        assert torch.equal(after, torch.rand(1)), "building LeNet moved the caller's RNG"
        return captured

    first, second = initial_weights(1), initial_weights(2)
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
