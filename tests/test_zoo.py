"""Any ImageNet classifier by name (torchvision:NAME, timm:NAME), and errors a person can act on.

The zoo runs real torchvision and timm models on the shared 1000-image ImageNet sample through
the ImageNet suite, as users run it (pytester subprocess). No pretrained weights can be had here,
so the real loading code falls back to BatchNorm-calibrated random weights with a note.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from pytest_cnnbench.models import zoo  # noqa: E402
from pytest_cnnbench.thresholds import top1_floor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "test_imagenet_models.py"
# Few timed calls, one thread (no probing): the accuracy and agreement passes are what these check.
FAST = ["--cnn-warmup=1", "--cnn-min-rounds=2", "--cnn-max-rounds=3", "--cnn-max-time=0.05", "--cnn-min-time=0.01",
        "--cnn-threads=1", "--cnn-no-download", "-p", "no:cacheprovider"]
INTERNALS = ("Traceback", "plugin.py", "process_cache.py", "registry.py", "imagefolder.py", "runner.py")


def shared_data() -> Path | None:
    root = Path(os.environ.get("CNNBENCH_DATA_ROOT") or REPO.parent / "shared" / "data")
    return root if (root / "imagenet-sample" / "labels.csv").is_file() else None


def has_timm() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


# -- names ------------------------------------------------------------------------------
def test_a_wildcard_expands_to_every_matching_torchvision_classifier():
    from torchvision.models import list_models

    expected = sorted(n for n in list_models(module=torchvision.models) if n.startswith("mobilenet"))
    assert len(expected) >= 3
    assert sorted(zoo.expand("torchvision:mobilenet*")) == [f"torchvision:{n}" for n in expected]
    assert zoo.expand("torchvision:resnet18") == ["torchvision:resnet18"]


def test_a_typo_lists_close_names():
    with pytest.raises(zoo.ZooNameError) as info:
        zoo.expand("torchvision:mobilenet_v9")
    message = str(info.value)
    assert "'torchvision:mobilenet_v9' is not a torchvision classification model" in message
    assert "torchvision:mobilenet_v2" in message and "torchvision:mobilenet_v3_small" in message
    with pytest.raises(zoo.ZooNameError, match="unknown model zoo 'torchvison'"):
        zoo.expand("torchvison:resnet18")
    with pytest.raises(zoo.ZooNameError, match="matches no torchvision ImageNet-1k classifier"):
        zoo.expand("torchvision:nothing_like_this*")


def test_torchvision_entry_takes_shape_and_classes_from_the_weights():
    entry = zoo.entry("torchvision:inception_v3")  # 299-pixel crops, from its transforms()
    assert entry.meta["input_shape"] == (3, 299, 299) and entry.meta["num_classes"] == 1000
    assert entry.meta["dataset"] == "imagenet"


def test_published_top1_is_read_from_torchvision_metadata():
    from torchvision.models import get_model_weights

    weights = get_model_weights("mobilenet_v3_small").DEFAULT
    published = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100
    assert zoo.published_top1(str(weights)) == pytest.approx(published)
    assert 0.5 < published < 0.9
    # On the full validation set with those pretrained weights, the floor is MLPerf's 99% of it...
    full = {"dataset": "imagenet", "samples": 50_000, "weights": "pretrained", "weights_id": str(weights)}
    floor = top1_floor("torchvision:mobilenet_v3_small", full, user={}, suite={})
    assert floor.value == pytest.approx(0.99 * published)
    assert str(weights) in floor.rule and "99%" in floor.rule
    # ...and nowhere else (the 1000-image sample, random weights).
    sample = {**full, "samples": 1000}
    assert top1_floor("torchvision:mobilenet_v3_small", sample, user={}, suite={}).value is None


def test_timm_results_table_is_read_when_shipped(tmp_path):
    # timm's results tables (results-imagenet.csv in its repository): model, img_size, top1, ...
    (tmp_path / "results-imagenet.csv").write_text("model,img_size,top1,top1_err,top5\n"
                                                   "resnet18.a1_in1k,288,73.158,26.842,91.026\n")
    table = zoo.timm_results_table(tmp_path)
    assert zoo.timm_published_top1("resnet18.a1_in1k", table) == pytest.approx(0.73158)
    assert zoo.timm_published_top1("resnet50.a1_in1k", table) is None


@pytest.mark.skipif(not has_timm(), reason="timm is not installed (pip install 'pytest-cnnbench[timm]')")
def test_timm_names_are_checked_and_non_imagenet_heads_refused():
    assert zoo.expand("timm:resnet18") == ["timm:resnet18"]
    assert zoo.expand("timm:resnet18.a1_in1k") == ["timm:resnet18.a1_in1k"]
    with pytest.raises(zoo.ZooNameError, match="close matches: timm:resnet18"):
        zoo.expand("timm:resnet_18")
    with pytest.raises(zoo.ZooNameError, match=r"not an ImageNet-1k classifier: its pretrained config predicts \d+ classes"):
        zoo.expand("timm:vit_base_patch16_224.augreg_in21k")
    # A wildcard leaves such models out (aimv2's default configs are feature extractors, not 1000-class heads).
    with pytest.raises(zoo.ZooNameError, match="matches no timm ImageNet-1k classifier"):
        zoo.expand("timm:aimv2_1b_patch14_*")
    entry = zoo.entry("timm:resnet18")
    assert entry.meta["input_shape"] == (3, 224, 224)


# -- through the plugin -----------------------------------------------------------------
def test_bad_zoo_names_are_one_usage_error_before_anything_is_built(pytester):
    pytester.makepyfile(test_imagenet_models=SUITE.read_text())
    result = pytester.runpytest_subprocess(
        "--cnn-model=torchvision:mobilenet_v9,torchvision:resnet18,foo:bar", "--cnn-batch-size=0", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "2 bad cnnbench options" in err
    assert "'torchvision:mobilenet_v9' is not a torchvision classification model; close matches: " \
           "torchvision:mobilenet_v2" in err
    assert "'foo:bar': unknown model zoo 'foo'" in err
    assert "--cnn-batch-size: '0' is not a positive integer" in err
    assert "Traceback" not in err and "cnnbench:" not in result.stdout.str()


def test_zoo_names_join_imagenet_tests_only_and_markers_may_list_them(pytester):
    pytester.makepyfile(test_imagenet_models=SUITE.read_text(), test_lenet="""
import pytest

@pytest.mark.cnnbench(models=["lenet"])
def test_lenet(cnnbench):
    pass
""", test_marked="""
import pytest

@pytest.mark.cnnbench(models=["torchvision:squeezenet1_0"])
def test_marked(cnnbench):
    pass
""")
    named = pytester.runpytest_subprocess("--cnn-model=torchvision:mobilenet_v3_small", "--cnn-backend=eager",
                                          "--collect-only", "-q", *FAST)
    ids = [line for line in named.stdout.lines if "::" in line]
    # Named on the command line: runs in the ImageNet suite (not the LeNet test, nor a marker naming another model).
    assert ids == ["test_imagenet_models.py::test_imagenet_model[torchvision:mobilenet_v3_small-eager-bs1]"], ids
    default = pytester.runpytest_subprocess("--cnn-backend=eager", "--collect-only", "-q", *FAST)
    ids = [line for line in default.stdout.lines if "::" in line]
    assert "test_marked.py::test_marked[torchvision:squeezenet1_0-eager-bs1]" in ids
    assert not [i for i in ids if "test_imagenet_model[torchvision" in i]  # the suite's default set stays its own


def test_timm_names_without_timm_are_a_usage_error_with_the_install_command(pytester):
    # timm made unimportable in the run's process, as if it were not installed.
    pytester.makeconftest("import sys\nsys.modules['timm'] = None\n")
    pytester.makepyfile(test_imagenet_models=SUITE.read_text())
    result = pytester.runpytest_subprocess("--cnn-model=timm:resnet18", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "timm: names need timm, which is not installed; install it with: pip install 'pytest-cnnbench[timm]'" \
        in result.stderr.str()


@pytest.mark.skipif(shared_data() is None, reason="the shared ImageNet sample (imagenet-sample/) is not here")
@pytest.mark.skipif(not has_timm(), reason="timm is not installed (pip install 'pytest-cnnbench[timm]')")
def test_zoo_models_run_in_the_imagenet_suite_on_eager_and_ort(pytester, real_data_cache):
    pytester.makepyfile(test_imagenet_models=SUITE.read_text())
    out = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "--cnn-model=torchvision:mobilenet_v3_small,timm:resnet18", "--cnn-backend=eager,ort",
        f"--cnn-data-root={shared_data()}", f"--cnn-cache-dir={real_data_cache}", f"--cnn-json={out}", *FAST,
        timeout=1500)
    result.assert_outcomes(passed=4)  # the marker's default set is not run: only the models named
    rows = {(r["model"], r["backend"]): r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {(m, b) for m in ("torchvision:mobilenet_v3_small", "timm:resnet18") for b in ("eager", "ort")}
    for (model, backend), row in rows.items():
        # 64 of the 1000 images held apart for int8 calibration (--cnn-calibration-split=auto): every row evaluates the rest.
        assert row["status"] == "passed" and row["samples"] == 936 and row["dataset_images"] == 1000
        assert row["dataset"] == "imagenet"
        assert row["weights"] == "random" and "could not be had (not in the cache, downloads disabled)" in row["weights_note"]
        assert "BatchNorm statistics and logit scale calibrated" in row["weights_note"]
        assert row["agreement"]["top1_agree"] >= 0.999 and row["agreement"]["rel_err"] < 1e-3
        # Calibrated random weights still tell the images apart (agreement is not trivially 100%).
        assert 0.0 <= row["top1"] < 0.05
    tv, tm = rows["torchvision:mobilenet_v3_small", "eager"], rows["timm:resnet18", "eager"]
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in tv["weights_note"]
    assert re.search(r"published top-1 67\.668% \(torchvision's metadata", tv["weights_note"])
    assert "timm/resnet18.a1_in1k" in tm["weights_note"] and "no published floor" in tm["weights_note"]


# -- errors a person can act on -----------------------------------------------------------
def write_jpeg(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (48, 64, 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, "JPEG")
    return path


def bad_folder(root: Path) -> tuple[Path, dict[str, Path]]:
    """imagenet-sample-style: 6 good images, plus a listed-but-missing one, a truncated JPEG and a text `.JPEG`."""
    folder = root / "imagenet-sample"
    rows, bad = [], {}
    for i in range(6):
        write_jpeg(folder / "images" / f"good_{i}.JPEG", seed=i)
        rows.append(("images/good_%d.JPEG" % i, i * 100))
    truncated = write_jpeg(folder / "images" / "truncated.JPEG", seed=9)
    truncated.write_bytes(truncated.read_bytes()[:400])
    text = folder / "images" / "notes.JPEG"
    text.write_text("this is a text file, not an image\n")
    bad = {"missing": folder / "images" / "missing.JPEG", "truncated": truncated, "text": text}
    rows[2:2] = [("images/missing.JPEG", 7), ("images/truncated.JPEG", 8), ("images/notes.JPEG", 9)]
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "class_index"])
        writer.writerows(rows)
    return root, bad


def error_section(out: str) -> str:
    """The ERRORS section of a pytest run's output, without captured output and the cnnbench table."""
    start = out.index("= ERRORS =")
    ends = [i for i in (out.find(mark, start) for mark in ("- Captured", "= cnnbench results", "short test summary")) if i > 0]
    return out[start:min(ends)]


def test_a_bad_folder_is_one_error_naming_every_bad_file_without_a_traceback(pytester, tmp_path):
    root, bad = bad_folder(tmp_path / "data")
    pytester.makepyfile(test_imagenet_models=SUITE.read_text())
    args = ("--cnn-model=alexnet", "--cnn-backend=eager", "--cnn-weights=random", f"--cnn-data-root={root}",
            f"--cnn-cache-dir={tmp_path / 'cache'}", *FAST)
    result = pytester.runpytest_subprocess(*args, f"--cnn-json={tmp_path / 'bad.json'}")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "3 of 9 images cannot be used; fix or remove them (and their labels), or run with --cnn-skip-bad-images" in out
    assert f"labels.csv, line 4: image {bad['missing'].resolve()} does not exist" in out
    assert f"{bad['truncated'].resolve()}: cannot decode image (OSError: " in out
    assert f"{bad['text'].resolve()}: cannot decode image (UnidentifiedImageError" in out
    section = error_section(out)
    assert not [word for word in INTERNALS if word in section], section
    assert len(section.splitlines()) < 12, section
    (row,) = json.loads((tmp_path / "bad.json").read_text())["results"]
    assert row["status"] == "error" and "imagenet-sample: 3 of 9 images cannot be used" in row["reason"]

    # With --cnn-skip-bad-images the three are left out, counted and warned about; the rest is evaluated.
    out_json = tmp_path / "out.json"
    result = pytester.runpytest_subprocess(*args, "--cnn-skip-bad-images", f"--cnn-json={out_json}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*left out 3 of 9 bad images (--cnn-skip-bad-images); evaluating the other 6*"])
    (row,) = json.loads(out_json.read_text())["results"]
    assert row["samples"] == 6


def test_a_bad_model_fixture_is_a_short_error(pytester):
    pytester.makeconftest("""
import pytest

@pytest.fixture
def cnn_model():
    return "not a model"
""")
    pytester.makepyfile(test_mine="""
import pytest

pytestmark = pytest.mark.cnnbench(dataset="synthetic", input_shape=(3, 16, 16))

def test_mine(cnnbench):
    cnnbench.run()
""")
    result = pytester.runpytest_subprocess("--cnn-backend=eager", *FAST)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "returned str, not a torch.nn.Module or a pytest_cnnbench.BuiltModel" in out
    section = error_section(out)
    assert not [word for word in INTERNALS if word in section], section
