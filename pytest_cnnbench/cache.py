"""On-disk artifact cache: trained weights, exported ONNX files, TorchScript archives, engines.

Safe for many processes (pytest-xdist workers, concurrent runs) sharing one folder:

- Every artifact has a SHA-256 sidecar. Both are written to temporary files and published
  with ``os.replace``, the artifact first and its checksum last, while holding the entry's
  lock (a ``filelock`` file under ``<root>/.locks/``). A reader whose artifact and checksum
  do not match takes the lock before judging, so it waits out a publish in progress instead
  of deleting a good entry; only a pair that still disagrees under the lock is corrupt.
- ``get_or_build`` / ``load_or_build``: the first process that misses builds under the lock;
  the others wait on it and reuse what it published.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar, Union

from filelock import FileLock, Timeout

BytesLike = Union[bytes, bytearray, memoryview]
T = TypeVar("T")


class CacheWarning(UserWarning):
    pass


def default_cache_dir() -> Path:
    env = os.environ.get("CNNBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-cnnbench"


def unsafe_cache_reason(root: Path) -> Optional[str]:
    """Why ``root`` must not be used as the cache, or None. The cache holds TorchScript archives,
    inductor's compiled code and TensorRT engines, which run code when loaded: like ssh with its
    keys, a folder that another user owns or can write to (or one above it, without the sticky
    bit) is refused. A folder that does not exist yet is fine: it is created 0700."""
    try:
        path = Path(root).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        return f"cannot resolve it ({exc})"
    me = os.geteuid() if hasattr(os, "geteuid") else None
    if me is None:  # pragma: no cover - not POSIX: no owners or modes to check
        return None
    for folder in (path, *path.parents):
        try:
            info = os.stat(folder)
        except FileNotFoundError:
            continue  # created later, by this user
        except OSError as exc:
            return f"cannot inspect {folder} ({exc.strerror})"
        what = "it" if folder == path else f"the folder above it, {folder},"
        if info.st_uid not in (me, 0):
            return f"{what} belongs to user id {info.st_uid}, not to this user (id {me}) or root"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and (folder == path or not info.st_mode & stat.S_ISVTX):
            who = "group and others" if writable == (stat.S_IWGRP | stat.S_IWOTH) else (
                "its group" if writable == stat.S_IWGRP else "others")
            return f"{what} is writable by {who} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_parts(*parts: Union[str, BytesLike]) -> str:
    """A short, stable key from strings and bytes (each part length-prefixed, so no ambiguity)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:24]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results and reports are ordinary files
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)  # the bytes reach the disk before the name points at them
        os.replace(tmp_path, target)
        _fsync(target.parent)  # and the rename itself survives a power cut
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a folder on a file system that cannot fsync one
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def is_special_file(path: Path) -> bool:
    """A path that must be written in place, never replaced by a rename: a device, a FIFO or a socket
    (``/dev/full``), or a name under /dev or /proc (``/dev/stdout``, a link to the process's own stdout)."""
    path = Path(path)
    if any(str(p).startswith(("/dev/", "/proc/")) for p in (path.absolute(), Path(os.path.realpath(path)))):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode) and not stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:  # missing (a new file) or unreadable: an ordinary path
        return False


def _own_stream(path: Path) -> Optional[int]:
    """The descriptor ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` or ``/proc/self/fd/N`` names, else None.
    Opening those anew would truncate a redirected file under the output already written to it."""
    text = str(path)
    named = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if text in named:
        return named[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        if text.startswith(prefix) and text[len(prefix):].isascii() and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


def write_output(target: Path, data: BytesLike) -> None:
    """A result file or report: special files written once, in place; anything else atomically, through
    the link when ``target`` is a symlink (the link stays a link)."""
    target = Path(target)
    fd = _own_stream(target)
    if fd is not None:  # the process's own stdout/stderr: through its descriptor, at its offset, no truncation
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        view = memoryview(bytes(data))
        while view:
            view = view[os.write(fd, view):]
        return
    if is_special_file(target):
        with open(target, "wb") as fh:
            fh.write(bytes(data))
        return
    atomic_write_bytes(Path(os.path.realpath(target)) if target.is_symlink() else target, data)


def atomic_write_bytes(target: Path, data: BytesLike) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(bytes(data))


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


class ArtifactCache:
    def __init__(self, root: Path, log: Optional[Callable[[str], None]] = None) -> None:
        self.root = Path(root)
        self.log = log  # told when this process waits for another one's build
        if not self.root.exists():  # private from the start: what it holds can run code when loaded
            with contextlib.suppress(OSError):  # a read-only place fails later, where it is used
                self.root.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(self.root, 0o700)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def _sidecar(self, path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def _checksum(self, path: Path) -> str:
        """The checksum its sidecar records; "" when that is not one (not text, not hex: a damaged
        sidecar, which makes the entry corrupt: discarded and rebuilt). FileNotFoundError if none."""
        text = self._sidecar(path).read_bytes().decode("ascii", "replace").strip()
        return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else ""

    def content_id(self, path: Path) -> str:
        """A published entry's identity: its kind, its key and its bytes' checksum (16 hex digits)."""
        try:
            digest = self._checksum(path)[:16] or sha256_file(path)[:16]
        except FileNotFoundError:
            digest = sha256_file(path)[:16]
        return f"{path.parent.name}/{path.stem} sha256:{digest}"

    # -- locking ---------------------------------------------------------------------------
    def _lock_file(self, path: Path) -> Path:
        # Apart from the artifacts, so listing a kind's folder shows artifacts and checksums only.
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            relative = Path(hash_parts(str(path)))
        return self.root / ".locks" / relative.parent / f"{relative.name}.lock"

    @contextlib.contextmanager
    def locked_path(self, path: Path) -> Iterator[None]:
        """Hold ``path``'s entry lock (re-entrant in this process) across processes."""
        lock_file = self._lock_file(path)
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        # One object per lock file in this process, so a nested acquire counts up instead of
        # blocking on the flock this process already holds.
        lock = FileLock(lock_file, is_singleton=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if self.log is not None:
                self.log(f"cnnbench: waiting for another process to finish {path}")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def locked(self, kind: str, key: str, suffix: str) -> contextlib.AbstractContextManager[None]:
        """Hold one entry's lock, e.g. to read-modify-write it or to build several files under one key."""
        return self.locked_path(self.path(kind, key, suffix))

    # -- reading ---------------------------------------------------------------------------
    def _intact(self, path: Path) -> bool:
        try:
            expected = self._checksum(path)
            return bool(expected) and sha256_file(path) == expected
        except FileNotFoundError:
            return False

    def lookup(self, kind: str, key: str, suffix: str) -> Path | None:
        """The cached artifact if present and intact; a corrupt one is removed with a warning."""
        path = self.path(kind, key, suffix)
        if self._intact(path):  # an agreeing pair is never a publish half done: no lock needed
            return path
        if not path.exists():
            return None
        with self.locked_path(path):
            return self._lookup_locked(path)

    def _lookup_locked(self, path: Path) -> Path | None:
        if not path.exists():
            return None
        if self._intact(path):
            return path
        expected = self._sidecar(path).exists()
        self._discard_locked(path, "checksum mismatch" if expected else "no checksum file (incomplete write?)")
        return None

    def discard(self, path: Path, why: str) -> None:
        """Remove an unusable entry (with a warning), under its lock so no publish is cut in half."""
        with self.locked_path(path):
            self._discard_locked(path, why)

    def _discard_locked(self, path: Path, why: str) -> None:
        warnings.warn(CacheWarning(f"cnnbench: cached artifact {path} is unusable ({why}); rebuilding it"))
        for stale in (path, self._sidecar(path)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    # -- writing ---------------------------------------------------------------------------
    def store(self, kind: str, key: str, suffix: str, write: Callable[[Path], None]) -> Path:
        """Build an artifact with ``write(tmp_path)`` and publish it atomically with its checksum."""
        path = self.path(kind, key, suffix)
        with self.locked_path(path):
            return self._publish_locked(path, write)

    def _publish_locked(self, path: Path, write: Callable[[Path], None]) -> Path:
        sidecar = self._sidecar(path)
        # Contexts exit innermost first: the artifact is published, then its checksum.
        with atomic_path(sidecar) as tmp_sidecar, atomic_path(path) as tmp:
            write(tmp)
            tmp_sidecar.write_text(sha256_file(tmp))
        return path

    def get_or_build(
        self,
        kind: str,
        key: str,
        suffix: str,
        write: Callable[[Path], None],
    ) -> tuple[Path, bool]:
        """Return ``(path, cache_hit)``; on a miss ``write(tmp_path)`` builds it, in one process only."""
        path = self.path(kind, key, suffix)
        if self._intact(path):
            return path, True
        with self.locked_path(path):
            if self._lookup_locked(path) is not None:  # another process built it while this one waited
                return path, True
            return self._publish_locked(path, write), False

    def load_or_build(
        self,
        kind: str,
        key: str,
        suffix: str,
        load: Callable[[Path], T],
        build: Callable[[], T],
        save: Callable[[T, Path], None],
    ) -> tuple[T, Path, bool]:
        """``(value, path, cache_hit)``: the cached entry loaded, else built, saved and published.

        ``load(path)`` may raise on an entry that passes its checksum yet is unusable (another
        torch build, a wrong shape): it is discarded with a warning and rebuilt. Building
        happens under the entry's lock, so concurrent processes build it once."""
        path = self.path(kind, key, suffix)
        if self._intact(path):
            with contextlib.suppress(Exception):  # judged again under the lock, where a failure discards
                return load(path), path, True
        with self.locked_path(path):
            if self._lookup_locked(path) is not None:
                try:
                    return load(path), path, True
                except Exception as exc:
                    self._discard_locked(path, f"does not load: {type(exc).__name__}: {exc}")
            value = build()
            self._publish_locked(path, lambda tmp: save(value, tmp))
            return value, path, False
