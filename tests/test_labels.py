"""Labels that point outside the dataset folder are refused, row by row; labels that look shifted
(trained weights near chance) are named as the likely fault."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import torch

from conftest import FAST, load_results, shared_data_root
from pytest_cnnbench.accuracy import near_chance_warning
from pytest_cnnbench.datasets.errors import DatasetError
from pytest_cnnbench.datasets.imagefolder import read_label_csv

DATA = shared_data_root()


def _image(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_csv_paths_outside_the_folder_are_named_and_refused(tmp_path):
    folder = tmp_path / "set"
    _image(folder / "images" / "a.png")
    _image(tmp_path / "outside.png")  # exists: only the confinement can refuse it
    (folder / "labels.csv").write_text(
        "file,class_index\n"
        "images/a.png,1\n"
        "../outside.png,2\n"
        f"{tmp_path / 'outside.png'},3\n"
        "images/../../outside.png,4\n")
    with pytest.raises(DatasetError) as info:
        read_label_csv(folder / "labels.csv")
    message = str(info.value)
    assert "3 bad row(s)" in message
    for line, name in ((3, "../outside.png"), (4, str(tmp_path / "outside.png")), (5, "images/../../outside.png")):
        assert f"line {line}: {name!r} points outside {folder}" in message, message
    assert "line 2" not in message


def test_links_placed_inside_the_folder_are_followed(tmp_path):
    pool = tmp_path / "pool"  # images kept elsewhere, more of them than the set uses
    for name in ("x.png", "y.png", "unused.png"):
        _image(pool / name)
    folder = tmp_path / "set"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "x.png").symlink_to(pool / "x.png")
    (folder / "more").symlink_to(pool, target_is_directory=True)
    (folder / "labels.csv").write_text("file,class_index\na.png,1\nx.png,2\nmore/y.png,3\nmore/unused.png,4\n")
    files, labels = read_label_csv(folder / "labels.csv")
    assert labels == [1, 2, 3, 4]
    assert [f.read_bytes() == (pool / f.name).read_bytes() for f in files[1:]] == [True, True, True]


# -- labels that look shifted ----------------------------------------------------------------
def _predictions(count: int = 400, classes: int = 10) -> torch.Tensor:
    return torch.arange(count) % classes


def test_correct_labels_and_a_weak_model_give_no_warning():
    predictions = _predictions()
    assert near_chance_warning(predictions, predictions.clone(), 10) is None
    weak = predictions.clone()
    weak[::3] = (weak[::3] + 1) % 10  # two thirds right: far above chance
    assert near_chance_warning(weak, predictions, 10) is None


def test_one_based_labels_are_named():
    predictions = _predictions()
    text = near_chance_warning(predictions, (predictions + 1) % 10, 10, "mnist")
    assert text and "1-based" in text and "100% of the predictions are the label minus one" in text


def test_reordered_labels_are_named_with_the_devkit_for_imagenet():
    predictions = torch.arange(3000) % 1000
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    text = near_chance_warning(predictions, order[predictions], 1000, "imagenet")
    assert text and "another class order" in text and "ILSVRC devkit" in text


@pytest.mark.skipif(DATA is None, reason="needs the shared MNIST files")
def test_trained_lenet_on_shifted_mnist_labels_warns_with_the_cause(pytester, real_data_cache, monkeypatch, tmp_path):
    """LeNet, trained on MNIST (pretrained weights in effect), scored on test labels counted from 1."""
    from pytest_cnnbench.cache import ArtifactCache
    from pytest_cnnbench.core import ModelContext
    from pytest_cnnbench.models.lenet import build_lenet

    # Trained (or found) on the real files first: training checks itself on the test labels.
    build_lenet(ModelContext("lenet", "pretrained", DATA, ArtifactCache(real_data_cache), "mnist", (1, 28, 28), 10,
                             download=False, log=lambda _: None))
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(real_data_cache))
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        os.symlink(DATA / "mnist" / name, root / name)  # the same training data: LeNet comes from the cache
    raw = bytearray(gzip.decompress((DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[8:] = bytes((b + 1) % 10 for b in raw[8:])
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    pytester.makepyfile(test_lenet="def test_lenet(cnnbench):\n    cnnbench.run()\n")
    out = tmp_path / "out.json"
    result = pytester.runpytest_subprocess(*FAST, "--cnn-model=lenet", "--cnn-backend=eager",
                                           f"--cnn-data-root={tmp_path / 'data'}", f"--cnn-json={out}", timeout=900)
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert "near chance" in text and "1-based" in text, text[-3000:]
    (row,) = load_results(out)
    assert row["top1"] < 0.05
    assert any("label minus one" in note for note in row["notes"])
