"""The TensorRT backend's torch.export mechanisms, on the CPU (issue 10, points 1 and 2).

torch-tensorrt compiles an ExportedProgram and saves the compiled module by exporting it
again (``torch_tensorrt.save`` -> ``dynamo._exporter.export`` -> ``torch.export.export``
with the ``dynamic_shapes`` it is given). Which batch sizes an engine accepts is decided by
those two exports, which are plain torch: they are exercised here with a tiny module, and
``ep.module()`` / a re-export of it stand where the compiled GraphModule stands on a GPU.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from pytest_cnnbench.backends.trt_export import (SUFFIX, batch_dynamic_shapes, batch_range_problem, example_input,
                                                 export_dynamic_batch, load_validated, save_pt2)
from pytest_cnnbench.cache import ArtifactCache, CacheWarning

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Cannot find transformers package"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")]  # ModelOpt uses it

SHAPE = (3, 8, 8)
MAX_BATCH = 64  # the trt backend's profile: 1 .. max(batch size, 64)


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)).eval()


def assert_runs_like(program_module, module, batches=(1, 2, MAX_BATCH)):
    for batch in batches:
        x = torch.randn(batch, *SHAPE)
        with torch.inference_mode():
            torch.testing.assert_close(program_module(x), module(x))


def test_torch_export_specializes_a_batch_of_1():
    """The original failure: torch-tensorrt's trace exports with the profile's opt batch, 1 by default."""
    with pytest.raises(Exception, match=r"specialized it to be a constant \(1\)"):
        torch.export.export(tiny(), (torch.randn(1, *SHAPE),), dynamic_shapes=batch_dynamic_shapes(MAX_BATCH))


@pytest.mark.parametrize("opt_batch", [1, 2, MAX_BATCH])
def test_export_accepts_batch_1_2_and_the_profile_max(opt_batch):
    module = tiny()
    program = export_dynamic_batch(module, SHAPE, MAX_BATCH, opt_batch=opt_batch)
    assert_runs_like(program.module(), module)
    assert batch_range_problem(program.module(), SHAPE, (MAX_BATCH + 1,)) is not None  # the profile's max holds


def _save_like_torch_tensorrt(compiled, dynamic: bool):
    """What ``torch_tensorrt.save(compiled, path, arg_inputs=[example], dynamic_shapes=...)`` does with a
    compiled GraphModule: export it again with that example and those dynamic shapes, then torch.export.save."""
    if dynamic:
        example, shapes = example_input(SHAPE, MAX_BATCH, opt_batch=1), batch_dynamic_shapes(MAX_BATCH)
    else:  # as bfe8e10 saved it: the cell's batch (1) as the example, no dynamic_shapes
        example, shapes = torch.randn(1, *SHAPE), None
    program = torch.export.export(compiled, (example,), dynamic_shapes=shapes, strict=False)
    return lambda path: torch.export.save(program, path)


def _load(path):
    return torch.export.load(str(path)).module()


def _problem(loaded):
    return batch_range_problem(loaded, SHAPE, (1, MAX_BATCH))


def test_cached_program_keeps_its_dynamic_batch_through_save_and_load(tmp_path, caplog):
    module = tiny()
    compiled = export_dynamic_batch(module, SHAPE, MAX_BATCH, opt_batch=1).module()
    cache = ArtifactCache(tmp_path)
    torch_logger = logging.getLogger("torch.export")  # does not propagate to the root logger caplog listens on
    torch_logger.addHandler(caplog.handler)
    try:
        path = cache.store("trt", "key", SUFFIX, lambda tmp: save_pt2(_save_like_torch_tensorrt(compiled, True), tmp))
        assert path.name.endswith(".pt2")
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)  # a good entry is not discarded
            loaded, found = load_validated(cache, "trt", "key", SUFFIX, _load, _problem)
    finally:
        torch_logger.removeHandler(caplog.handler)
    assert found == path
    assert_runs_like(loaded, module)
    assert not [r for r in caplog.records if ".pt2" in r.getMessage()]  # torch warns on any other suffix
    assert set(tmp_path.joinpath("trt").iterdir()) == {path, path.with_name(path.name + ".sha256")}  # no leftovers


def test_static_cached_program_is_discarded_so_it_is_rebuilt(tmp_path):
    """bfe8e10 cached engines saved without dynamic shapes: they loaded, then failed every other batch."""
    compiled = export_dynamic_batch(tiny(), SHAPE, MAX_BATCH, opt_batch=1).module()
    cache = ArtifactCache(tmp_path)
    path = cache.store("trt", "key", SUFFIX, lambda tmp: save_pt2(_save_like_torch_tensorrt(compiled, False), tmp))
    static = _load(path)
    static(torch.randn(1, *SHAPE))  # it loads and runs the batch it was saved with ...
    assert "Guard failed" in _problem(static)  # ... and rejects the profile's max
    with pytest.warns(CacheWarning, match=r"rejects batch size 64 \(AssertionError: Guard failed"):
        assert load_validated(cache, "trt", "key", SUFFIX, _load, _problem) is None
    assert not path.exists() and cache.lookup("trt", "key", SUFFIX) is None


def test_cache_entry_that_does_not_load_is_discarded(tmp_path):
    cache = ArtifactCache(tmp_path)
    path = cache.store("trt", "key", SUFFIX, lambda tmp: tmp.write_bytes(b"not a program"))
    with pytest.warns(CacheWarning, match="does not load"):
        assert load_validated(cache, "trt", "key", SUFFIX, _load, _problem) is None
    assert not path.exists()


def test_int8_fake_quant_program_exports_with_a_dynamic_batch(monkeypatch):
    """ModelOpt's int8 calibration runs on the CPU; its export form (the ``tensorrt::quantize_op`` custom
    op) is only traced for CUDA tensors, so the export runs on fake CUDA tensors (no device needed)."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:  # not in the CPU extras; pip install nvidia-modelopt requests huggingface-hub
        pytest.skip(f"nvidia-modelopt cannot be imported: {exc}")
    from modelopt.torch.quantization.utils import export_torch_mode
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = tiny()
    images = torch.randn(32, *SHAPE)
    with torch.no_grad():
        mtq.quantize(module, mtq.INT8_DEFAULT_CFG, forward_loop=lambda m: m(images))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # ModelOpt asks which device is current
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = module.to("cuda")
        example = example_input(SHAPE, MAX_BATCH, "cuda", opt_batch=1)
        example_of_1 = torch.randn(1, *SHAPE, device="cuda")
    assert example.is_cuda and example.shape[0] == 2
    with export_torch_mode():
        program = torch.export.export(fake, (example,), dynamic_shapes=batch_dynamic_shapes(MAX_BATCH))
        with pytest.raises(Exception, match=r"specialized it to be a constant \(1\)"):
            torch.export.export(fake, (example_of_1,), dynamic_shapes=batch_dynamic_shapes(MAX_BATCH))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "tensorrt.quantize_op.default" in targets  # what torch-tensorrt converts to TensorRT Q/DQ layers
    (batch_range,) = program.range_constraints.values()
    assert (batch_range.lower, batch_range.upper) == (1, MAX_BATCH)
