"""How each runtime deploys an artifact, run inside the child (``child.py``).

A loader is a class built from the child's spec with four steps the child times separately:
``import_runtime`` (the runtime's import), ``load`` (the artifact from disk to something that
answers), ``prepare_input`` (untimed) and ``infer`` (one call); ``cache_report`` then says whether
the runtime's own cache was hit, from the runtime's evidence. A backend of one's own names its
loader with a ``deploy_loader`` attribute on its prepared object (a class like these).

Importing this module imports no runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def blob_files(folder: str) -> dict[str, int]:
    """Files in a runtime's cache folder and their sizes."""
    path = Path(folder)
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()} if path.is_dir() else {}


class Loader:
    """The common part: the spec, a seeded input of the cell's shape, no runtime cache."""

    runtime_cache = "none"

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.artifact = spec["artifact"]
        self.threads = int(spec.get("threads") or 0) or None
        self.shape = tuple(spec["input_shape"])  # batch first
        self.evidence = "this runtime keeps no cache of its own: the artifact is what it loads"

    def numpy_input(self) -> Any:
        import numpy as np

        return np.random.default_rng(0).standard_normal(self.shape, dtype=np.float32)

    def cache_report(self) -> dict[str, Any]:
        return {"runtime_cache": self.runtime_cache, "evidence": self.evidence}

    def prepare_input(self) -> None:
        self.input = self.numpy_input()


class TorchScriptLoader(Loader):
    """The frozen TorchScript archive, ``torch.jit.load``, run under ``torch.inference_mode``."""

    def import_runtime(self) -> None:
        import torch

        self.torch = torch
        if self.threads:
            torch.set_num_threads(self.threads)

    def load(self) -> None:
        self.module = self.torch.jit.load(self.artifact, map_location="cpu")

    def prepare_input(self) -> None:
        self.input = self.torch.from_numpy(self.numpy_input())

    def infer(self) -> None:
        with self.torch.inference_mode():
            self.module(self.input)


class AotiLoader(TorchScriptLoader):
    """An AOTInductor package (``.pt2``): compiled ahead of time, loaded with ``aoti_load_package``,
    so no model code, no tracing and no C++ compiler at start-up."""

    def load(self) -> None:
        from torch._inductor import aoti_load_package

        self.module = aoti_load_package(self.artifact)

    def infer(self) -> None:
        with self.torch.inference_mode():
            self.module(self.input)


class OrtLoader(Loader):
    """An ONNX Runtime session on the CPU provider, with the plugin's session options.

    Its cache: the optimized model (``SessionOptions.optimized_model_filepath``). Cold, the session
    optimizes the exported model (ORT_ENABLE_ALL) and writes the optimized one; warm, it loads that
    file with graph optimizations off (ORT_DISABLE_ALL): the optimization stage is skipped. The
    optimized file holds this CPU's layout (NCHWc) kernels, so it is kept per ONNX Runtime version
    and machine, and per source model."""

    def import_runtime(self) -> None:
        import onnxruntime

        self.ort = onnxruntime

    def options(self, optimize: bool) -> Any:
        ort = self.ort
        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return options

    def load(self) -> None:
        cached = Path(self.spec["cache_file"])  # read here when present (warm runs only)
        written = Path(self.spec["scratch_dir"]) / cached.name  # written here otherwise (the parent publishes it)
        if self.spec.get("kind") == "warm" and cached.is_file():
            size = cached.stat().st_size
            self.session = self.ort.InferenceSession(str(cached), sess_options=self.options(False),
                                                     providers=["CPUExecutionProvider"])
            self.runtime_cache = "hit"
            self.evidence = (f"loaded the optimized model {cached.name} ({size} bytes) that an earlier run wrote; "
                             "graph optimizations skipped (ORT_DISABLE_ALL)")
            return
        options = self.options(True)
        options.optimized_model_filepath = str(written)
        self.session = self.ort.InferenceSession(self.artifact, sess_options=options, providers=["CPUExecutionProvider"])
        self.runtime_cache = "miss"
        made = f"wrote {written.name} ({written.stat().st_size} bytes)" if written.is_file() else "wrote no file"
        why = "a cold run reads no cache" if self.spec.get("kind") != "warm" else "none written yet"
        self.evidence = f"no optimized model to load ({why}): optimized the export (ORT_ENABLE_ALL) and {made}"

    def prepare_input(self) -> None:
        super().prepare_input()
        self.input_name = self.session.get_inputs()[0].name

    def infer(self) -> None:
        self.session.run(None, {self.input_name: self.input})


class OpenVinoLoader(Loader):
    """``compile_model`` for the CPU with the plugin's configuration, and OpenVINO's model cache
    (``CACHE_DIR``): cold, it compiles and exports a blob; warm, it imports the blob. Evidence: the
    compiled model's ``LOADED_FROM_CACHE`` property and the blob files before and after."""

    def import_runtime(self) -> None:
        import openvino

        self.ov = openvino

    def load(self) -> None:
        folder = self.spec["cache_dir"]
        before = blob_files(folder)
        core = self.ov.Core()
        core.set_property({"CACHE_DIR": folder})
        model = core.read_model(self.artifact)
        model.reshape({0: list(self.shape)})
        config = {"INFERENCE_PRECISION_HINT": "f16" if self.spec.get("precision") == "fp16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        after = blob_files(folder)
        new = sorted(set(after) - set(before))
        try:
            from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
            said = f"LOADED_FROM_CACHE={from_cache}"
        except Exception:  # an OpenVINO without the property: the files alone
            from_cache, said = None, "no LOADED_FROM_CACHE property"
        if from_cache or (from_cache is None and before and not new):
            self.runtime_cache = "hit"
            self.evidence = f"{said}; {len(before)} blob file(s) in CACHE_DIR, none written"
        else:
            self.runtime_cache = "miss"
            written = ", ".join(f"{name} ({after[name]} bytes)" for name in new) or "nothing"
            self.evidence = f"{said}; compiled and wrote {written} into CACHE_DIR ({len(before)} file(s) there before)"

    def infer(self) -> None:
        self.request.infer({0: self.input})


class TorchTensorrtLoader(TorchScriptLoader):
    """The trt backend's artifact: torch-tensorrt's ExportedProgram (``.pt2``) with its TensorRT
    engines serialized inside. Loading it deserializes each engine (``IRuntime.deserialize_cuda_engine``
    inside torch-tensorrt's TRTEngine) and creates its execution context. Written against
    torch-tensorrt 2.14's API; not run here (no GPU)."""

    def import_runtime(self) -> None:
        super().import_runtime()
        import torch_tensorrt

        self.torch_tensorrt = torch_tensorrt

    def load(self) -> None:
        self.module = self.torch_tensorrt.load(self.artifact).module()
        self.evidence = ("the engines are the artifact (built and timed when the cell was prepared); TensorRT's "
                         "timing cache applies to building, not to loading")

    def prepare_input(self) -> None:
        dtype = self.torch.float16 if self.spec.get("precision") == "fp16" else self.torch.float32
        self.input = self.torch.from_numpy(self.numpy_input()).to("cuda", dtype)

    def infer(self) -> None:
        with self.torch.inference_mode():
            self.module(self.input)
        self.torch.cuda.synchronize()


# The loader of each built-in backend's artifact (a backend may name its own: ``deploy_loader``).
BUILTIN = {"torchscript": TorchScriptLoader, "ort": OrtLoader, "openvino": OpenVinoLoader, "inductor": AotiLoader,
           "trt": TorchTensorrtLoader}
# Runtimes with a cache of their own, and what it is called in the docs and the table's notes.
RUNTIME_CACHES = {"ort": "optimized model file", "openvino": "CACHE_DIR blobs"}
