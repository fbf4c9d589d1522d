"""The cache is not a way in: it holds code that runs when loaded (TorchScript archives, inductor's
compiled code, TensorRT engines), so a folder others can write to is refused before anything is
built, and a new cache is created private. Temporary folders only: the shared cache is not touched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import FAST


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _unsafe(tmp_path: Path, how: str) -> tuple[Path, str]:
    cache = tmp_path / "cache"
    cache.mkdir()
    if how == "world-writable":
        cache.chmod(0o777)
        return cache, "is writable by group and others (mode 777)"
    if how == "group-writable":
        cache.chmod(0o770)
        return cache, "is writable by its group (mode 770)"
    if how == "others-writable":
        cache.chmod(0o702)
        return cache, "is writable by others (mode 702)"
    if how == "parent-writable":
        cache.chmod(0o700)
        tmp_path.chmod(0o777)  # another user could swap the cache folder for one of theirs
        return cache, f"the folder above it, {tmp_path}, is writable by group and others"
    if how == "other-owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a folder to another user")
        cache.chmod(0o700)
        os.chown(cache, 65534, 65534)
        return cache, "belongs to user id 65534"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "others-writable", "parent-writable",
                                 "other-owner"])
def test_cache_others_can_write_is_refused_before_anything_is_built(tiny_project, tmp_path_factory, how):
    base = tmp_path_factory.mktemp("unsafe")
    cache, why = _unsafe(base, how)
    try:
        result = tiny_project.runpytest_subprocess(*FAST, f"--cnn-cache-dir={cache}", "--cnn-backend=torchscript")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
        err = result.stderr.str()
        assert f"refusing the cache folder {cache}" in err and why in err and "Traceback" not in err, err
        assert list(cache.iterdir()) == []  # nothing built, nothing loaded
    finally:
        base.chmod(0o700)


def test_new_cache_is_private_and_a_sticky_parent_is_fine(tiny_project, tmp_path_factory):
    sticky = tmp_path_factory.mktemp("sticky")
    sticky.chmod(0o1777)  # like /tmp: others cannot rename what is not theirs
    cache = sticky / "new" / "cache"
    result = tiny_project.runpytest_subprocess(*FAST, f"--cnn-cache-dir={cache}", "--cnn-backend=torchscript")
    result.assert_outcomes(passed=1)
    assert _mode(cache) == 0o700
    assert any((cache / "torchscript").iterdir())  # it was used
