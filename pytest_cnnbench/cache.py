"""On-disk artifact cache: trained weights, exported ONNX files, TorchScript archives, engines.

Every artifact is written atomically (temporary file in the same folder, then
``os.replace``) with a SHA-256 sidecar, so a concurrent run never sees half a
file and a corrupted artifact is detected, reported and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, Union

BytesLike = Union[bytes, bytearray, memoryview]


class CacheWarning(UserWarning):
    pass


def default_cache_dir() -> Path:
    env = os.environ.get("CNNBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-cnnbench"


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
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(target: Path, data: BytesLike) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(bytes(data))


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def _sidecar(self, path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def lookup(self, kind: str, key: str, suffix: str) -> Path | None:
        """The cached artifact if present and intact; a corrupt one is removed with a warning."""
        path = self.path(kind, key, suffix)
        sidecar = self._sidecar(path)
        if not path.exists():
            return None
        expected = sidecar.read_text().strip() if sidecar.exists() else ""
        if expected and sha256_file(path) == expected:
            return path
        self.discard(path, "checksum mismatch" if expected else "no checksum file (incomplete write?)")
        return None

    def discard(self, path: Path, why: str) -> None:
        warnings.warn(CacheWarning(f"cnnbench: cached artifact {path} is unusable ({why}); rebuilding it"))
        for stale in (path, self._sidecar(path)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def store(self, kind: str, key: str, suffix: str, write: Callable[[Path], None]) -> Path:
        """Build an artifact with ``write(tmp_path)`` and publish it atomically with its checksum."""
        path = self.path(kind, key, suffix)
        with atomic_path(path) as tmp:
            write(tmp)
            digest = sha256_file(tmp)
            # Sidecar first: a reader that finds the artifact always finds its checksum.
            atomic_write_text(self._sidecar(path), digest)
        return path

    def get_or_build(
        self,
        kind: str,
        key: str,
        suffix: str,
        write: Callable[[Path], None],
    ) -> tuple[Path, bool]:
        """Return ``(path, cache_hit)``."""
        found = self.lookup(kind, key, suffix)
        if found is not None:
            return found, True
        return self.store(kind, key, suffix, write), False
