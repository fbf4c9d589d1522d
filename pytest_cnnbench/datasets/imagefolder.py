"""ImageNet-style evaluation folders, in either of two layouts:

(a) class subfolders named by WordNet id, ``<folder>/<wnid>/<image>`` (the usual ILSVRC-2012
    validation layout; images may sit deeper inside a class folder);
(b) images with a labels CSV, ``<folder>/labels.csv``, with a ``file`` column (relative to the CSV's folder) and a ``wnid`` and/or ``class_index``
    column, such as the shared ``imagenet-sample/``.

Search order under ``--cnn-data-root`` (first folder that holds a labels CSV or a
WordNet-id subfolder wins): ``<root>``, ``<root>/imagenet/val``, ``<root>/imagenet``,
``<root>/val``, ``<root>/imagenet-sample``. The full validation set is thus preferred
over the 1000-image sample when both are present.

Class indices follow the standard ImageNet-1k order (the 1000 WordNet ids sorted), from
``imagenet_synsets.txt`` shipped with this package (list from timm, Apache-2.0), so any
user folder maps the same way. Images are decoded with PIL and converted to RGB (grayscale,
CMYK, palette images), then passed to the model's ``preprocess`` one by one in a thread pool
(PIL releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import csv
import functools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Optional

import torch

from ..cache import hash_parts, sha256_file
from ..core import CellSkip, DatasetContext
from .errors import DatasetError

NUM_CLASSES = 1000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LABEL_CSV = "labels.csv"
WNID_PATTERN = re.compile(r"^n\d{8}$")
SEARCH_SUBDIRS = ("", "imagenet/val", "imagenet", "val", "imagenet-sample")


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted)."""
    path = Path(__file__).with_name("imagenet_synsets.txt")
    wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(wnids) != NUM_CLASSES or list(wnids) != sorted(set(wnids)):
        raise DatasetError(f"{path}: expected {NUM_CLASSES} distinct sorted WordNet ids, found {len(wnids)}")
    return wnids


@functools.lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_label_csv(folder: Path) -> Optional[Path]:
    # Only this name: any other CSV (results, notes) in a data folder must not be taken for labels.
    return folder / LABEL_CSV if (folder / LABEL_CSV).is_file() else None


def layout_of(folder: Path) -> Optional[str]:
    """'csv', 'wnid-folders', or None when the folder does not look like an ImageNet-style set."""
    if not folder.is_dir():
        return None
    if find_label_csv(folder) is not None:
        return "csv"
    if any(p.is_dir() and WNID_PATTERN.match(p.name) for p in folder.iterdir()):
        return "wnid-folders"
    return None


def candidate_dirs(root: Path) -> list[Path]:
    return [root / sub if sub else root for sub in SEARCH_SUBDIRS]


def locate(root: Optional[Path]) -> tuple[Path, str]:
    if root is None:
        raise CellSkip("no ImageNet-style folder: ImageNet cannot be downloaded; give --cnn-data-root "
                       "(or $CNNBENCH_DATA_ROOT), or --cnn-dataset=synthetic for latency only")
    for folder in candidate_dirs(root):
        layout = layout_of(folder)
        if layout is not None:
            return folder, layout
    searched = ", ".join(str(d) for d in candidate_dirs(root))
    raise CellSkip(f"no ImageNet-style folder (WordNet-id subfolders or images + {LABEL_CSV}) found; looked in "
                   f"{searched}; use --cnn-dataset=synthetic for latency only")


def read_wnid_folders(folder: Path) -> tuple[list[Path], list[int]]:
    index = wnid_to_index()
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in classes if p.name not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DatasetError(f"{folder}: subfolder(s) {shown} are not ImageNet-1k classes "
                           f"(class folders must be named by one of the 1000 ILSVRC-2012 WordNet ids, e.g. n01440764)")
    files, labels = [], []
    for class_dir in classes:
        for path in sorted(p for p in class_dir.rglob("*") if is_image(p)):
            files.append(path)
            labels.append(index[class_dir.name])
    if not files:
        raise DatasetError(f"{folder}: the class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, labels


def _csv_label(row: dict[str, str], where: str) -> int:
    index = wnid_to_index()
    wnid = (row.get("wnid") or "").strip()
    raw_index = (row.get("class_index") or "").strip()
    label = None
    if wnid:
        if wnid not in index:
            raise DatasetError(f"{where}: wnid {wnid!r} is not an ImageNet-1k class (not among the 1000 ILSVRC-2012 WordNet ids)")
        label = index[wnid]
    if raw_index:
        try:
            given = int(raw_index)
        except ValueError:
            raise DatasetError(f"{where}: class_index {raw_index!r} is not an integer") from None
        if not 0 <= given < NUM_CLASSES:
            raise DatasetError(f"{where}: class_index {given} is outside 0..{NUM_CLASSES - 1}")
        if label is not None and given != label:
            raise DatasetError(f"{where}: class_index {given} disagrees with wnid {wnid} (index {label} in the "
                               f"standard sorted-wnid order)")
        label = given
    if label is None:
        raise DatasetError(f"{where}: neither a wnid nor a class_index")
    return label


def listing(header: str, problems: list[str], limit: int = 50) -> str:
    """``header:`` and one indented line per problem (the first ``limit`` of them)."""
    shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
    return header + ":\n  " + "\n  ".join(shown)


def leaves_folder(name: str) -> bool:
    """Whether a path written in a labels CSV would leave the CSV's folder: absolute (POSIX or
    Windows form) or through a '..' component. Links inside the folder are the user's own: followed."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or bool(PureWindowsPath(name).drive) or ".." in posix.parts


def read_label_csv(csv_path: Path, missing: Optional[list[tuple[Path, str]]] = None) -> tuple[list[Path], list[int]]:
    """The labelled images a labels CSV lists. Every bad row is named in one DatasetError. With
    ``missing`` (a list), rows whose image does not exist are appended there as ``(path, message)``
    and left out instead, so they can be reported together with the images that do not decode."""
    base = csv_path.parent
    problems: list[str] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            if "file" not in columns or not ({"wnid", "class_index"} & set(columns)):
                raise DatasetError(f"{csv_path}: needs a 'file' column and a 'wnid' and/or 'class_index' column "
                                   f"(found {', '.join(columns) or 'no header'})")
            files, labels, seen, rows = [], [], set(), 0
            for line, row in enumerate(reader, start=2):
                rows += 1
                where = f"{csv_path}, line {line}"
                name = (row.get("file") or "").strip()
                if not name:
                    problems.append(f"{where}: empty 'file'")
                    continue
                if leaves_folder(name):
                    problems.append(f"{where}: {name!r} points outside {base} (an absolute path, or through '..'); "
                                    f"give images relative to the labels CSV's folder")
                    continue
                path = base / name  # inside the folder; a link the user placed there is followed
                real = path.resolve()
                if real in seen:
                    problems.append(f"{where}: {name} is listed twice")
                    continue
                seen.add(real)
                try:
                    label = _csv_label(row, where)
                except DatasetError as exc:
                    problems.append(str(exc))
                    continue
                if not path.is_file():
                    message = f"{where}: image {path} does not exist"
                    if missing is None:
                        problems.append(message)
                    else:
                        missing.append((path, message))
                    continue
                files.append(path)
                labels.append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read the labels CSV ({exc})") from None
    if problems:
        raise DatasetError(listing(f"{csv_path}: {len(problems)} bad row(s)", problems))
    if not files:
        raise DatasetError(f"{csv_path}: lists no images" if not rows else
                           listing(f"{csv_path}: none of the {rows} listed images exist", [m for _, m in missing or ()]))
    # Every image in the folders the CSV points into must be labelled: a mismatch means the
    # CSV and the folder are out of step, and silently evaluating a subset would hide that.
    unlisted = sorted(p.resolve() for folder in {f.parent for f in files} for p in folder.iterdir()
                      if is_image(p) and p.resolve() not in seen)
    if unlisted:
        raise DatasetError(f"{csv_path} lists {len(files)} images but {len(unlisted)} more image(s) beside them have "
                           f"no label (e.g. {unlisted[0]}); the label count does not match the folder")
    return files, labels


def decode_rgb(path: Path) -> Any:
    """The image as an RGB PIL image; any decoding problem is a DatasetError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # palette transparency: go through RGBA, as PIL advises
            return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def decode_workers() -> int:
    from ..environment import cpu_count

    return max(1, min(8, cpu_count()))


class ImageFolderDataset:
    """An ImageNet-style folder. Bad images (listed but missing, or not decodable) are all found
    before anything fails: ``load()`` raises one DatasetError naming every one of them, or, with
    ``skip_bad_images``, leaves them out with a count and a warning."""

    name = "imagenet"
    num_classes = NUM_CLASSES
    labels_meaningful = True

    def __init__(self, folder: Path, layout: Optional[str] = None, skip_bad_images: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.layout = layout or layout_of(self.folder)
        self.skip_bad_images = skip_bad_images
        self.log = log
        self.missing: list[tuple[Path, str]] = []  # listed in the labels CSV but absent: reported by load()
        self.skipped: list[str] = []  # with skip_bad_images: what load() left out, and why
        if self.layout == "csv":
            self.label_csv: Optional[Path] = find_label_csv(self.folder)
            self.files, labels = read_label_csv(self.label_csv, self.missing)  # type: ignore[arg-type]
        elif self.layout == "wnid-folders":
            self.label_csv = None
            self.files, labels = read_wnid_folders(self.folder)
        else:
            raise DatasetError(f"{self.folder}: neither WordNet-id class subfolders nor images with a {LABEL_CSV}")
        self.labels = torch.tensor(labels, dtype=torch.int64)
        # What the images are, not where they lie: the same data reached by another path, copied
        # or re-checked-out (new modification times) keys the same caches. Hashing the bytes costs
        # about 0.3 s per 100 MB, small next to decoding them.
        parts = [self.layout]
        self.file_hashes = [sha256_file(path) for path in self.files]  # also: calibration folders' overlap
        for digest, label in zip(self.file_hashes, labels):
            parts.append(f"{digest}|{label}")
        self.content_id = hash_parts("imagefolder", *parts)

    @classmethod
    def from_context(cls, ctx: DatasetContext) -> "ImageFolderDataset":
        if ctx.num_classes != NUM_CLASSES:
            raise DatasetError(f"the imagenet dataset has {NUM_CLASSES} classes but the model predicts {ctx.num_classes}")
        folder, layout = locate(ctx.data_root)
        dataset = cls(folder, layout, skip_bad_images=ctx.skip_bad_images, log=ctx.log)
        missing = f" (and {len(dataset.missing)} listed but missing)" if dataset.missing else ""
        ctx.log(f"cnnbench: imagenet: {len(dataset)} images{missing} from {folder} ({layout})")
        return dataset

    def __len__(self) -> int:
        return len(self.files)

    def load(self, preprocess: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and preprocess every image once; ``preprocess`` receives an RGB PIL image."""

        def one(path: Path) -> torch.Tensor:
            image = decode_rgb(path)
            try:
                return preprocess(image)
            except Exception as exc:
                raise DatasetError(f"{path}: preprocessing failed ({type(exc).__name__}: {exc})") from None

        bad: dict[int, str] = {}  # index in self.files -> what is wrong with it
        first, start = None, 0
        for start, path in enumerate(self.files):  # the first good image sets the tensor's shape
            try:
                first = one(path)
                break
            except DatasetError as exc:
                bad[start] = str(exc)
        if first is None:
            self._fail_or_skip(bad)  # every image is bad: never skipped
        images = torch.empty((len(self.files), *first.shape), dtype=first.dtype)
        images[start] = first

        def fill(i: int) -> None:
            try:
                sample = one(self.files[i])
            except DatasetError as exc:
                bad[i] = str(exc)
                return
            if sample.shape != first.shape:
                bad[i] = (f"{self.files[i]}: preprocessed to shape {tuple(sample.shape)}, "
                          f"but {self.files[start]} to {tuple(first.shape)}")
                return
            images[i] = sample

        # One torch thread per worker: the per-image tensor ops are small, and the workers
        # already occupy the cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(decode_workers()) as pool:
                for _ in pool.map(fill, range(start + 1, len(self.files))):
                    pass
        finally:
            torch.set_num_threads(threads)
        if bad or self.missing:
            keep = self._fail_or_skip(bad)
            images, self.labels = images[keep].contiguous(), self.labels[keep]
        return images, self.labels

    def _fail_or_skip(self, bad: dict[int, str]) -> torch.Tensor:
        """One DatasetError naming every bad image; with ``skip_bad_images`` (and some good images
        left), the indices of the good ones, after a warning with the count."""
        problems = [message for _, message in self.missing] + [bad[i] for i in sorted(bad)]
        total = len(self.files) + len(self.missing)
        if not self.skip_bad_images or len(bad) == len(self.files):
            advice = ("fix or remove them (and their labels), or run with --cnn-skip-bad-images to leave them out"
                      if len(bad) < len(self.files) else "none of the images can be used")
            raise DatasetError(listing(f"{self.folder}: {len(problems)} of {total} images cannot be used; {advice}",
                                       problems))
        import warnings

        keep = torch.tensor([i for i in range(len(self.files)) if i not in bad], dtype=torch.int64)
        self.skipped = problems
        message = listing(f"cnnbench: {self.folder}: left out {len(problems)} of {total} bad images "
                          f"(--cnn-skip-bad-images); evaluating the other {len(keep)}", problems, limit=10)
        self.log(message)
        warnings.warn(message, UserWarning, stacklevel=2)
        self.files = [self.files[i] for i in keep.tolist()]
        self.file_hashes = [self.file_hashes[i] for i in keep.tolist()]
        self.missing = []  # reported once: a second load() has nothing more to leave out
        self.content_id = hash_parts(self.content_id, "left out", *map(str, sorted(bad)))
        return keep
