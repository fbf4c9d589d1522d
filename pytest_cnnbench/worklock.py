"""One machine, many workers: timed sections never overlap, and nothing heavy runs beside them.

Work that is not timed (building a model, training, export, the accuracy passes) takes the
machine's lock *shared*, so workers do it side by side; a timed section takes it *exclusive*,
so it runs with no other worker's timing or heavy work beside it, and its figures mean what a
serial run's mean. A gate in front keeps a waiting timer from starving: once it waits, new
shared holders wait behind it. POSIX ``flock`` locks on files under the temp folder, one pair
per device (``cpu``; ``cuda0``, ``cuda1``... for GPUs, which time independently), so they cover
every pytest process on the machine (xdist workers, or two sessions started side by side) and
vanish with a process that dies holding them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process at a time is all that is promised
    fcntl = None  # type: ignore[assignment]

_held = threading.local()  # per thread: the mode held, so nested sections do not lock against themselves


def lock_folder() -> Path:
    folder = Path(os.environ.get("CNNBENCH_LOCK_DIR") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class MachineLock:
    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.path = lock_folder() / f"pytest-cnnbench-{device}.lock"
        self.gate = lock_folder() / f"pytest-cnnbench-{device}.gate"

    def _open(self, path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.chmod(path, 0o666)  # shared by every user's sessions on the machine
        except OSError:
            pass
        return fd

    @contextlib.contextmanager
    def _hold(self, mode: str) -> Iterator[None]:
        if fcntl is None or getattr(_held, "mode", None):
            yield  # already held by this thread (either mode): nested sections run inside it
            return
        gate, fd = self._open(self.gate), self._open(self.path)
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)
            if mode == "shared":
                fcntl.flock(gate, fcntl.LOCK_UN)  # passed the gate: no timer was waiting
                fcntl.flock(fd, fcntl.LOCK_SH)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX)  # the gate stays held: new shared holders queue behind
            _held.mode = mode
            yield
        finally:
            _held.mode = None
            os.close(fd)  # closing releases the locks
            os.close(gate)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Untimed work: side by side with other workers' untimed work, never beside a timed section."""
        return self._hold("shared")

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """A timed section: alone on this device."""
        return self._hold("exclusive")


def for_device(device: str, index: int = 0) -> MachineLock:
    return MachineLock("cpu" if device == "cpu" else f"{device}{index}")
