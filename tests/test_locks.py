"""The machine lock with real processes: a stuck holder is named and waited out with a limit, a
planted link is not followed, a killed parent's LoadGen child dies and frees the lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_cnnbench import worklock

HOLDER = textwrap.dedent("""
    import sys, time
    from pytest_cnnbench.worklock import MachineLock
    with MachineLock("cpu").exclusive():
        print("holding", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(worklock, "wait_limit_s", 1.5)
    monkeypatch.setattr(worklock, "_fallbacks_said", set())  # "said once" per test
    return tmp_path


def _start_holder(lock_dir: Path, script: str = HOLDER) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, "marker-arg-for-the-holder"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "CNNBENCH_LOCK_DIR": str(lock_dir)})
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.mark.parametrize("mode", ["shared", "exclusive"])
def test_waiter_gives_up_after_the_limit_naming_the_holder(lock_dir, mode):
    holder = _start_holder(lock_dir)
    try:
        started = time.monotonic()
        with pytest.raises(worklock.LockTimeout) as info:
            with getattr(worklock.MachineLock("cpu"), mode)():
                pass
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert 1.4 < waited < 10
    message = str(info.value)
    assert f"pid {holder.pid}" in message and "marker-arg-for-the-holder" in message, message
    assert "holding it since" in message and "--cnn-lock-timeout" in message
    with worklock.MachineLock("cpu").exclusive():  # the holder is gone: free at once
        pass


def test_timeout_fails_the_cell_with_the_holders_name(tiny_project_locked, tmp_path):
    holder = _start_holder(tmp_path)
    try:
        result = tiny_project_locked.runpytest_subprocess("--cnn-backend=eager", "--cnn-lock-timeout=1", "-p", "no:cacheprovider")
    finally:
        holder.kill()
        holder.wait()
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    assert "LockTimeout" in text and f"pid {holder.pid}" in text, text[-3000:]


@pytest.fixture
def tiny_project_locked(tiny_project, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_LOCK_DIR", str(tmp_path))
    return tiny_project


@pytest.mark.parametrize("name", ["pytest-cnnbench-cpu.lock", "pytest-cnnbench-cpu.gate"])
def test_planted_symlink_is_not_followed(lock_dir, tmp_path_factory, name):
    victim_dir = tmp_path_factory.mktemp("victim")
    victim = victim_dir / "precious"
    victim.write_text("secret")
    victim.chmod(0o600)
    missing = victim_dir / "not-there"
    (lock_dir / name).symlink_to(victim)
    other = "pytest-cnnbench-cpu.gate" if name.endswith(".lock") else "pytest-cnnbench-cpu.lock"
    (lock_dir / other).symlink_to(missing)  # a link to a file that does not exist must not create it
    with pytest.warns(worklock.LockWarning, match="symbolic link") as said:
        with worklock.MachineLock("cpu").exclusive():
            pass
        with worklock.MachineLock("cpu").shared():  # said once, not at every section
            pass
    assert len(said) == 1 and "not from other users'" in str(said[0].message)
    assert victim.read_text() == "secret" and (victim.stat().st_mode & 0o777) == 0o600
    assert not missing.exists()
    assert (lock_dir / f"pytest-cnnbench-cpu.uid{os.geteuid()}.lock").exists()


def test_shared_file_made_by_this_user_is_open_to_all(lock_dir):
    old = os.umask(0o077)
    try:
        with worklock.MachineLock("cpu").shared():
            pass
    finally:
        os.umask(old)
    assert (lock_dir / "pytest-cnnbench-cpu.lock").stat().st_mode & 0o777 == 0o666


PARENT = textwrap.dedent("""
    import multiprocessing, sys, threading, time
    from pathlib import Path
    from pytest_cnnbench.worklock import MachineLock
    from pytest_cnnbench.mlperf.child import run_test
    from pytest_cnnbench.mlperf.settings import ScenarioOptions, loadgen_settings

    def predict(indices):
        time.sleep(0.01)
        return bytes(4 * len(indices))

    def announce():
        while not multiprocessing.active_children():
            time.sleep(0.05)
        time.sleep(0.5)
        print("holding", multiprocessing.active_children()[0].pid, flush=True)

    values = loadgen_settings("single-stream", ScenarioOptions(seconds=60), {"p50_s": 0.01, "batch_size": 1},
                              samples=16)
    with MachineLock("cpu").exclusive():
        threading.Thread(target=announce, daemon=True).start()
        run_test(predict, values, 16, 16, Path(sys.argv[1]), timeout_s=120)
""")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killed_parents_loadgen_child_dies_and_frees_the_lock(lock_dir, tmp_path):
    pytest.importorskip("mlperf_loadgen")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "CNNBENCH_LOCK_DIR": str(lock_dir)})
    line = parent.stdout.readline().split()
    assert line and line[0] == "holding", line
    child = int(line[1])
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(child), "the LoadGen child outlived its SIGKILLed parent"
        with worklock.MachineLock("cpu").exclusive():  # within the 1.5 s limit: nobody holds it
            pass
    finally:
        if _alive(child):
            os.kill(child, 9)


AS_NOBODY = textwrap.dedent("""
    import os, sys, warnings
    from pytest_cnnbench import worklock
    os.setgroups([]); os.setgid(65534); os.setuid(65534)  # imports done: from here on another user
    worklock.wait_limit_s = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with worklock.MachineLock("cpu").exclusive():
                print("acquired")
        except worklock.LockTimeout as exc:
            print("timeout:", exc)
    for w in caught:
        print("warning:", w.message)
""")


@pytest.fixture
def shared_tmp():
    """A sticky folder every user can write to, as /tmp is (pytest's own tmp_path is private to root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="cnnbench-locks-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


def _as_nobody(folder: Path) -> str:
    run = subprocess.run([sys.executable, "-c", AS_NOBODY], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CNNBENCH_LOCK_DIR": str(folder)})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user")
def test_another_users_lock_file_keeps_the_exclusion_machine_wide(shared_tmp):
    holder = _start_holder(shared_tmp)  # root holds the lock in files it created
    try:
        out = _as_nobody(shared_tmp)
    finally:
        holder.kill()
        holder.wait()
    assert f"timeout: gave up after" in out and f"pid {holder.pid}" in out, out  # waited on root's lock
    assert "warning:" not in out  # the shared files were usable: no fallback
    assert sorted(p.name for p in shared_tmp.iterdir()) == ["pytest-cnnbench-cpu.gate", "pytest-cnnbench-cpu.lock"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user")
def test_another_users_unwritable_lock_file_falls_back_to_a_per_user_one_and_says_so(shared_tmp):
    for name in ("pytest-cnnbench-cpu.gate", "pytest-cnnbench-cpu.lock"):
        (shared_tmp / name).write_text("")
        (shared_tmp / name).chmod(0o644)  # root's, not writable by others (an old umask, say)
    out = _as_nobody(shared_tmp)
    assert "acquired" in out, out
    assert out.count("warning:") == 1 and "Permission denied" in out and "not from other users'" in out, out
    own = shared_tmp / "pytest-cnnbench-cpu.uid65534.lock"
    assert own.stat().st_uid == 65534 and own.stat().st_mode & 0o777 == 0o600


def test_gpu_locks_are_named_by_uuid_whatever_the_visible_index(monkeypatch):
    """Two sessions see one physical GPU as cuda:0 and cuda:1 (CUDA_VISIBLE_DEVICES): one lock.
    No GPU here: torch's device properties stand in, with the UUID object torch returns."""
    import types
    import uuid as uuidlib

    import torch

    physical = uuidlib.UUID("6f1c0d2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f")
    visible = {"a": [physical, uuidlib.uuid4()], "b": [uuidlib.uuid4(), physical]}
    names = {}
    for session, devices in visible.items():
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i, d=devices: types.SimpleNamespace(uuid=d[i]))
        names[session] = (worklock.for_device("cuda", 0).device, worklock.for_device("cuda", 1).device)
    assert names["a"][0] == names["b"][1] == f"cuda-GPU-{physical}"
    assert names["a"][1] != names["b"][0]


def test_gpu_lock_falls_back_to_the_index_with_a_warning(monkeypatch):
    import torch

    monkeypatch.setattr(worklock, "_fallbacks_said", set())

    def no_device(index):
        raise RuntimeError("no CUDA GPUs are available")

    monkeypatch.setattr(torch.cuda, "get_device_properties", no_device)
    with pytest.warns(worklock.LockWarning, match="UUID of CUDA device 1 is unknown"):
        assert worklock.for_device("cuda", 1).device == "cuda1"
