"""int8 calibration images held apart from the evaluated ones on an ImageNet-style folder: a calibration
folder (--cnn-calibration-dir) whose overlap with the evaluated images is named in the row, and a seeded
split (--cnn-calibration-split) under which every row of the dataset evaluates the same rest.

A tiny model on 32-pixel crops of a 12-image folder, ONNX Runtime int8: seconds per run."""

from __future__ import annotations

import shutil

import pytest

from conftest import load_results
from test_imagenet import FAST, labelled_folder, write_image

CONFTEST = """
import torch.nn as nn
from torchvision import transforms
from pytest_cnnbench import BuiltModel, register_model

@register_model("tinyimg", dataset="imagenet", input_shape=(3, 32, 32), num_classes=1000)
def tinyimg(ctx):
    import torch
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))
    preprocess = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor()])
    return BuiltModel(module.eval(), preprocess, "user", "tiny test model", "resize36-crop32")
"""
SUITE = """
def test_tiny_imagenet(cnnbench):
    cnnbench.run()
"""


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    data = tmp_path / "data"
    labelled_folder(data, count=12)
    monkeypatch.setenv("CNNBENCH_DATA_ROOT", str(data))
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path / "locks"))  # nothing here is timed: wait for no other run
    return pytester, data / "imagenet-sample"


def run(pytester, *args):
    out = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(*FAST, "--benchmark-disable", "--cnn-model=tinyimg", "--cnn-backend=eager,ort", "--cnn-precision=fp32,int8",
                                           f"--cnn-json={out}", *args, timeout=600)
    assert result.ret == 0, result.stdout.str()[-3000:]
    return {(r["backend"], r["precision"]): r for r in load_results(out) if r["status"] == "passed"}, result


def test_a_calibration_folder_that_overlaps_the_evaluated_images_is_named_in_the_row(project, tmp_path):
    pytester, evaluated = project
    calib = tmp_path / "calib"
    shutil.copy(evaluated / "images" / "img_3.JPEG", calib.mkdir() or calib / "copy_of_3.jpg")  # same bytes, other name
    write_image(calib / "sub" / "own.JPEG", seed=99)
    write_image(calib / "own2.png", seed=98, fmt="PNG")
    rows, result = run(pytester, f"--cnn-calibration-dir={calib}", "--cnn-calibration-images=8")
    int8 = rows[("ort", "int8")]
    assert int8["calibration"].startswith(f"3 images from {calib} (--cnn-calibration-dir); 1 of them are also evaluated: "
                                          f"copy_of_3.jpg (= {evaluated / 'images' / 'img_3.JPEG'})")
    assert any(n.startswith("calibration images are among the evaluated: 3 images from") for n in int8["notes"])
    # A calibration folder replaces the split: every row evaluates all 12 images.
    assert all(r["samples"] == 12 and r["evaluation"] is None for r in rows.values())

    (calib / "copy_of_3.jpg").unlink()  # apart now: nothing named, no note
    rows, _ = run(pytester, f"--cnn-calibration-dir={calib}", "--cnn-calibration-images=8")
    assert rows[("ort", "int8")]["calibration"].startswith(f"2 images from {calib} (--cnn-calibration-dir), minmax")
    assert not any("among the evaluated" in n for n in rows[("ort", "int8")]["notes"])


def test_a_seeded_split_evaluates_the_same_rest_in_every_row(project):
    pytester, _ = project
    rows, result = run(pytester, "--cnn-calibration-split=4", "--cnn-calibration-images=4")
    assert set(rows) == {("eager", "fp32"), ("ort", "fp32"), ("ort", "int8")}
    for r in rows.values():  # fp32 rows too: the same 8 images
        assert r["samples"] == 8 and r["dataset_images"] == 12
        assert r["evaluation"] == "8 of the 12 images: 4 held apart for int8 calibration (seeded split, --cnn-calibration-split)"
    assert rows[("ort", "int8")]["calibration"].startswith("4 of the 4 images held apart from the 8 evaluated (imagenet, seeded split)")
    assert rows[("ort", "int8")]["agreement"]["top1_agree"] is not None
    assert "evaluated on imagenet: 8 of the 12 images: 4 held apart" in result.stdout.str()

    rows, _ = run(pytester, "--cnn-calibration-split=off", "--cnn-calibration-images=4")
    assert all(r["samples"] == 12 and r["evaluation"] is None for r in rows.values())
    assert any(n.startswith("calibration images are among the evaluated: 4 of the 12 evaluation images")
               for n in rows[("ort", "int8")]["notes"])


def test_bad_calibration_options_are_usage_errors(pytester):
    result = pytester.runpytest_subprocess("--cnn-calibration-split=some", "--cnn-calibration-dir=/no/such/folder")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--cnn-calibration-split: 'some' is not auto, off or a positive integer" in err
    assert "--cnn-calibration-dir: '/no/such/folder' is not a folder" in err


def test_the_published_floor_still_applies_to_the_full_validation_set_with_images_held_apart():
    from pytest_cnnbench.thresholds import top1_floor

    row = {"dataset": "imagenet", "samples": 49_936, "dataset_images": 50_000, "weights": "pretrained",
           "weights_id": "efficientnet-lite0-57934424"}
    assert top1_floor("efficientnet_lite0", row, {}, {"efficientnet_lite0": 0.85}).value == pytest.approx(0.99 * 0.751)
    sample = {**row, "samples": 936, "dataset_images": 1000}
    assert top1_floor("efficientnet_lite0", sample, {}, {"efficientnet_lite0": 0.85}).value == 0.85
