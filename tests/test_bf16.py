"""bf16 on the CPU: it runs where the backend really runs it and the CPU has the instructions, what ran is
checked, and it skips with the reason elsewhere (a CPU without bf16 is simulated by hiding its flags)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import FAST, load_results

SUITE = """
def test_bench(cnnbench):
    cnnbench.run()
    cnnbench.check_agreement(max_rel_err=5e-2, min_top1_agree=0.9)
"""
BF16_FLAGS = "avx512_bf16,amx_bf16,bf16"


def cpu_has_bf16() -> bool:
    from pytest_cnnbench.backends.base import BF16_CPU_FLAGS
    from pytest_cnnbench.backends.ort_quant import cpu_flags

    return bool(set(BF16_CPU_FLAGS) & cpu_flags())


def run(project, backends: str):
    project.makepyfile(test_suite=SUITE)
    out = project.path / "out.json"
    result = project.runpytest_subprocess(*FAST, "--benchmark-disable", "--cnn-threads=1", f"--cnn-backend={backends}",
                                          "--cnn-precision=fp32,bf16", f"--cnn-json={out}", "-rs", timeout=600)
    assert result.ret == 0, result.stdout.str()[-3000:]
    return {(r["backend"], r["precision"]): r for r in load_results(out)}, result


def test_bf16_rows_skip_with_the_reason_on_a_cpu_without_bf16(tiny_project):
    tiny_project._monkeypatch.setenv("CNNBENCH_HIDE_CPU_FLAGS", BF16_FLAGS)  # the seam: this CPU's flags, less these
    backends = "eager,ort,torchscript" + (",openvino" if importlib.util.find_spec("openvino") else "")
    rows, result = run(tiny_project, backends)
    for backend in backends.split(","):
        assert rows[(backend, "fp32")]["status"] == "passed"
        assert rows[(backend, "bf16")]["status"] == "skipped", rows[(backend, "bf16")]
    for backend in ("eager", "openvino") if "openvino" in backends else ("eager",):
        reason = rows[(backend, "bf16")]["reason"]
        assert "needs bf16 instructions (x86 avx512_bf16 or amx_bf16, Arm bf16)" in reason and "none" in reason
    assert "no bf16 convolution kernels" in rows[("ort", "bf16")]["reason"]  # a path the backend lacks, on any CPU
    assert "bf16 TorchScript is not built here" in rows[("torchscript", "bf16")]["reason"]


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions (avx512_bf16, amx_bf16, bf16)")
def test_bf16_runs_in_bf16_where_the_cpu_has_it(tiny_project):
    backends = "eager" + (",openvino" if importlib.util.find_spec("openvino") else "")
    rows, _ = run(tiny_project, backends)
    for backend in backends.split(","):
        row = rows[(backend, "bf16")]
        assert row["status"] == "passed", row
        # bf16 rounding, not fp32's: larger than fp32's error, still small (the output dtype / runtime
        # property was checked when it was prepared).
        assert 1e-5 < row["agreement"]["rel_err"] < 5e-2, row["agreement"]
        assert rows[(backend, "fp32")]["agreement"] is None or rows[(backend, "fp32")]["agreement"]["rel_err"] < 1e-5


def test_bf16_must_be_what_ran():
    import torch

    from pytest_cnnbench.backends.base import check_bf16_output

    check_bf16_output("eager", torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="the output is torch.float32, not torch.bfloat16"):
        check_bf16_output("eager", torch.zeros(2))


def test_a_bf16_rows_speedup_is_over_eager_fp32_and_marked():
    from pytest_cnnbench import table

    def row(backend, precision, p50):
        return {"test": f"t[{backend}-{precision}]", "model": "m", "backend": backend, "device": "cpu",
                "precision": precision, "batch_size": 1, "dataset": "imagenet",
                "latency_ms": {"p50": p50, "ci95_rel": 0.0}}

    rows = [row("eager", "fp32", 10.0), row("eager", "bf16", 4.0), row("openvino", "bf16", 2.0)]
    fp32, eager_bf16, openvino_bf16 = table.speedups(rows)
    assert fp32["reference"] is None  # eager fp32 is the reference; eager bf16 is not one
    assert eager_bf16["value"] == 2.5 and eager_bf16["reference"] == "m-eager-bs1"
    assert openvino_bf16["value"] == 5.0 and openvino_bf16["reference"] == "m-eager-bs1"
    text = table.format_table(rows)
    assert "2.50x ±0.0%~‡" in text and "5.00x ±0.0%~‡" in text
    assert "‡ bf16: speedup over eager fp32 (what bf16 replaces), not over eager bf16" in text
