"""One machine, many workers: timed sections never overlap, and nothing heavy runs beside them.

Work that is not timed (building a model, training, export, the accuracy passes) takes the
machine's lock *shared*, so workers do it side by side; a timed section takes it *exclusive*,
so it runs with no other worker's timing or heavy work beside it, and its figures mean what a
serial run's mean. A gate in front keeps a waiting timer from starving: once it waits, new
shared holders wait behind it. POSIX ``flock`` locks on files under the temp folder, one pair
per device (``cpu``; ``cuda-<GPU UUID>`` for GPUs, which time independently), so they cover
every pytest process on the machine, every user's (xdist workers, or two sessions started side
by side) and vanish with a process that dies holding them.

The files sit in a folder every user can write to, so they are opened with care: never through
a symbolic link (``O_NOFOLLOW``), only as a regular file with one link, chmodded on the open
descriptor by its owner only. Where another user's file cannot be opened for writing, this
process locks a per-user file instead and says so once: timing is then not kept apart from that
user's. A holder writes who it is (pid, command, since when) into the file, so a waiter can say
whom it waits for; a wait longer than ``wait_limit_s`` raises ``LockTimeout`` naming the holder.
A forked child closes its copies of the descriptors (it must not keep a dead parent's lock).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process at a time is all that is promised
    fcntl = None  # type: ignore[assignment]

DEFAULT_WAIT_LIMIT_S = 900.0
wait_limit_s = DEFAULT_WAIT_LIMIT_S  # set from --cnn-lock-timeout by the plugin
SAY_WAITING_AFTER_S = 2.0  # a wait shorter than this is ordinary and shown nowhere

_held = threading.local()  # per thread: the mode held, so nested sections do not lock against themselves
_open_fds: set[int] = set()  # every lock descriptor open in this process: a forked child closes them
_fallbacks_said: set[str] = set()


class LockTimeout(RuntimeError):
    """The machine lock was not acquired within the wait limit; the message names the holder."""


class LockWarning(UserWarning):
    """The machine-wide lock file could not be used: a per-user one is locked instead."""


class _Unusable(OSError):
    """The shared lock file cannot be used safely by this user."""


def lock_folder() -> Path:
    folder = Path(os.environ.get("CNNBENCH_LOCK_DIR") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _close_in_child() -> None:
    # Only this process's copies: the parent's descriptions, and so its locks, stay as they are.
    for fd in list(_open_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()
    _held.mode = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _open_checked(path: Path, shared_file: bool) -> int:
    """Open ``path`` for reading and writing without following a link; create it if missing.

    ``shared_file``: the machine-wide file (mode 0666, any owner); else this user's own (0600,
    which must be this user's). Raises ``_Unusable`` with the reason when it cannot be used."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_RDWR | nofollow | getattr(os, "O_CLOEXEC", 0)
    mode = 0o666 if shared_file else 0o600
    for _ in range(10):
        try:
            # An existing file first, without O_CREAT: fs.protected_regular refuses O_CREAT on
            # another user's file in a sticky folder even when its mode lets this user write.
            fd = os.open(path, flags)
            created = False
        except FileNotFoundError:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
                created = True
            except FileExistsError:
                continue  # another process created it in between: open that one
            except OSError as exc:
                raise _Unusable(f"{path}: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Unusable(f"{path} is a symbolic link (not followed)") from None
            raise _Unusable(f"{path}: {exc.strerror}") from None
        break
    else:  # pragma: no cover - created and removed ten times over
        raise _Unusable(f"{path}: keeps appearing and vanishing")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable(f"{path} is not a regular file")
        if info.st_nlink != 1:
            raise _Unusable(f"{path} has {info.st_nlink} hard links")
        mine = info.st_uid == os.geteuid()
        if not shared_file and not mine:
            raise _Unusable(f"{path} belongs to user id {info.st_uid}, not to this user")
        if mine and created and stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)  # the umask narrowed it; on the descriptor, never by path
        return fd
    except BaseException:
        os.close(fd)
        raise


def _identity(mode: str) -> str:
    command = " ".join(sys.argv)[:200] or sys.executable
    return f"pid={os.getpid()} uid={os.geteuid()} since={time.time():.3f} mode={mode} cmd={command}\n"


def _write_identity(fd: int, mode: str) -> None:
    with contextlib.suppress(OSError):
        data = _identity(mode).encode("utf-8", "replace")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def holder_description(fd: int) -> str:
    """Who last took the lock behind ``fd``, as written by it: 'pid 123 (pytest ...), holding it since
    09:01:02 (45 s)', or a plain 'an unknown process' when nothing readable is there."""
    try:
        text = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    fields = dict(part.split("=", 1) for part in text.split(" ", 4) if "=" in part)
    if "pid" not in fields:
        return "an unknown process (it wrote no identity)"
    try:
        since = float(fields.get("since", "nan"))
        when = f", holding it since {time.strftime('%H:%M:%S', time.localtime(since))} ({time.time() - since:.0f} s)"
    except ValueError:
        when = ""
    mode = fields.get("mode", "?")
    return f"pid {fields['pid']} ({fields.get('cmd', '?')}, {mode}){when}"


class MachineLock:
    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.path = lock_folder() / f"pytest-cnnbench-{device}.lock"
        self.gate = lock_folder() / f"pytest-cnnbench-{device}.gate"

    def _per_user(self, path: Path) -> Path:
        return path.with_name(f"{path.stem}.uid{os.geteuid()}{path.suffix}")

    def _open_pair(self) -> tuple[int, int, Path]:
        try:
            gate = _open_checked(self.gate, True)
        except _Unusable as exc:
            return self._open_fallback(str(exc))
        try:
            fd = _open_checked(self.path, True)
        except _Unusable as exc:
            os.close(gate)
            return self._open_fallback(str(exc))
        return gate, fd, self.path

    def _open_fallback(self, why: str) -> tuple[int, int, Path]:
        path = self._per_user(self.path)
        if self.device not in _fallbacks_said:
            _fallbacks_said.add(self.device)
            message = (f"cnnbench: the machine-wide lock cannot be used ({why}); locking {path} instead: "
                       f"timed sections are kept apart from this user's other runs only, not from other users'")
            warnings.warn(LockWarning(message), stacklevel=4)
        gate = _open_checked(self._per_user(self.gate), False)
        try:
            return gate, _open_checked(path, False), path
        except BaseException:
            os.close(gate)
            raise

    def _acquire(self, fd: int, operation: int, what: str, path: Path, started: float) -> None:
        """flock ``fd`` within the wait limit, polling; raise ``LockTimeout`` naming the holder."""
        said = False
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= wait_limit_s:
                raise LockTimeout(
                    f"gave up after {waited:.0f} s waiting for the machine lock {path} ({what}): it is held by "
                    f"{holder_description(fd)}. Raise --cnn-lock-timeout to wait longer, or end that process.")
            if not said and waited >= SAY_WAITING_AFTER_S:
                said = True
                from . import progress

                progress.update(f"waiting for the machine lock: {holder_description(fd)}")
            time.sleep(min(pause, max(0.0, wait_limit_s - waited)))
            pause = min(pause * 2, 0.05)

    @contextlib.contextmanager
    def _hold(self, mode: str) -> Iterator[None]:
        if fcntl is None or getattr(_held, "mode", None):
            yield  # already held by this thread (either mode): nested sections run inside it
            return
        gate, fd, path = self._open_pair()
        _open_fds.update((gate, fd))
        started = time.monotonic()
        try:
            self._acquire(gate, fcntl.LOCK_EX, "its gate, behind a waiting timed section", path, started)
            if mode == "shared":
                fcntl.flock(gate, fcntl.LOCK_UN)  # passed the gate: no timer was waiting
                self._acquire(fd, fcntl.LOCK_SH, "shared", path, started)
            else:
                _write_identity(gate, mode)  # shared waiters queue on the gate: they name this timer
                self._acquire(fd, fcntl.LOCK_EX, "exclusive", path, started)  # the gate stays held
            _write_identity(fd, mode)
            _held.mode = mode
            yield
        finally:
            _held.mode = None
            _open_fds.difference_update((gate, fd))
            os.close(fd)  # closing releases the locks
            os.close(gate)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Untimed work: side by side with other workers' untimed work, never beside a timed section."""
        return self._hold("shared")

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """A timed section: alone on this device."""
        return self._hold("exclusive")


def gpu_key(index: int) -> str:
    """The lock name of visible CUDA device ``index``: its UUID, the same whatever CUDA_VISIBLE_DEVICES
    numbers it; the index (with a note, once) where the UUID is unknown."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an old torch without .uuid, or no device: the index is all there is
        uuid = ""
    if uuid:
        from .gpu import nvml_uuid

        return "cuda-" + "".join(c if c.isalnum() or c == "-" else "_" for c in nvml_uuid(uuid))
    if "gpu-index" not in _fallbacks_said:
        _fallbacks_said.add("gpu-index")
        warnings.warn(LockWarning(f"cnnbench: the UUID of CUDA device {index} is unknown: its lock is named by "
                                  f"index, so sessions with different CUDA_VISIBLE_DEVICES may time one GPU at once"))
    return f"cuda{index}"


def for_device(device: str, index: int = 0) -> MachineLock:
    if device == "cpu":
        return MachineLock("cpu")
    return MachineLock(gpu_key(index) if device == "cuda" else f"{device}{index}")
