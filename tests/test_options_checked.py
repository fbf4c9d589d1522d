"""Issue 26: every numeric option is validated before anything is built, by one validator per setting
shared by the command line, the ini file and the cnnbench marker."""

from __future__ import annotations

import pytest

from conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Every bad value at once: the usage error names them all, so one subprocess checks them all.
BAD = {
    "--cnn-max-time": ("nan", "--cnn-max-time: 'nan' is not a valid positive finite number"),
    "--cnn-target-ci": ("inf", "--cnn-target-ci: 'inf' is not a valid positive finite number"),
    "--cnn-min-time": ("-inf", "--cnn-min-time: '-inf' is not a valid positive finite number"),
    "--cnn-threads": ("\u00b2", "--cnn-threads: '\u00b2' is neither 'auto' nor a positive number of threads"),
    "--cnn-warmup": ("\u0661", "--cnn-warmup: '\u0661' is not a valid count"),
    "--cnn-calibration-images": ("\u00b3", "--cnn-calibration-images: '\u00b3' is not a positive integer"),
    "--cnn-batch-size": ("1,\u00b2", "--cnn-batch-size: '\u00b2' is not a positive integer"),
    "--cnn-server-qps": ("0.001", "--cnn-server-qps: '0.001' q/s would take 459000 s"),
}


def test_bad_numbers_are_one_usage_error_before_anything_runs(tiny_project, tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    args = [f"{option}={value}" for option, (value, _) in BAD.items()]
    result = tiny_project.runpytest_subprocess(*FAST, *args, f"--cnn-cache-dir={a_file}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    err = result.stderr.str()
    assert "INTERNALERROR" not in err + result.stdout.str()
    for _, message in BAD.values():
        assert message in err
    assert f"--cnn-cache-dir: {a_file} exists and is not a folder" in err
    assert "cnnbench results" not in result.stdout.str()


def test_cache_dir_under_a_file_and_rounds_in_contradiction(tiny_project, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = tiny_project.runpytest_subprocess(*FAST, f"--cnn-cache-dir={a_file}/sub/cache",
                                               "--cnn-min-rounds=100", "--cnn-max-rounds=10")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"--cnn-cache-dir: {a_file}/sub/cache cannot be created: {a_file} is not a folder" in err
    assert "--cnn-min-rounds=100 is above --cnn-max-rounds=10" in err


def test_ini_values_get_the_same_validators(tiny_project):
    tiny_project.makeini("[pytest]\ncnn_model = tiny\ncnn_max_time = nan\ncnn_threads = \u00b2\n")
    result = tiny_project.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--cnn-max-time: 'nan' is not a valid positive finite number" in result.stderr.str()
    assert "--cnn-threads: '\u00b2' is neither" in result.stderr.str()


@pytest.mark.parametrize("batch_sizes", ["[0]", "[2.5]", "['\u00b2']", "[-1]"])
def test_marker_batch_sizes_get_the_batch_size_validator(tiny_project, batch_sizes):
    tiny_project.makepyfile(test_suite=f"""
        import pytest

        @pytest.mark.cnnbench(batch_sizes={batch_sizes})
        def test_bench(cnnbench):
            cnnbench.run()
    """)
    result = tiny_project.runpytest_subprocess(*FAST, "--collect-only", "-q", "--cnn-backend=eager")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, out  # a collection error: nothing runs
    assert "@pytest.mark.cnnbench: batch_sizes:" in out and "is not a positive integer" in out
    assert "INTERNALERROR" not in out + result.stderr.str()
