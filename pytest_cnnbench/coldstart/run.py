"""The parent's side: find a measured cell's deployable artifact, start the children, gather their figures.

Each cell gets ``runs`` pairs of children, cold then warm, alternating so the machine's drift lands on
both kinds. Cold: the runtime's cache folder is new and empty (the runtime pays its compile and writes
its cache there; the parent then publishes what it wrote). Warm: the runtime's cache folder holds what
an earlier cold run wrote. The OS page cache is warm for both: the parent reads the artifact just before
each child, and the docs say so rather than drop the machine's caches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from . import KINDS, NO_ARTIFACT, RESULT_MARKER

# The figures of one child, in stage order; each gets a median and an interval over the runs.
FIGURES = ("interpreter_start_s", "import_s", "load_s", "first_inference_ms", "first10_ms", "steady_p50_ms",
           "peak_rss_mb", "first_answer_s")
CHILD = Path(__file__).with_name("child.py")


class ColdStartError(Exception):
    """A child that crashed, hung or answered nothing: the cell's cold-start part fails with this."""


@dataclasses.dataclass
class ColdStartRecord:
    """One cell's cold start: per run kind the medians of its children's figures, their intervals,
    the runtime cache's verdict and its evidence, and each run's own figures."""

    status: str  # "measured", "failed" or NO_ARTIFACT
    loader: Optional[str] = None
    artifact: Optional[str] = None
    artifact_mb: Optional[float] = None
    runtime_cache_kind: Optional[str] = None  # what the warm run reuses, e.g. "CACHE_DIR blobs"; None: no runtime cache
    os_page_cache: Optional[str] = None
    cold: dict[str, Any] = dataclasses.field(default_factory=dict)
    warm: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a kind's runs, with each figure's interval: [min, max] and, from six runs on, the
    median's distribution-free 95% CI (stats.median_ci, relative)."""
    from ..stats import median_ci

    out: dict[str, Any] = {"runs": len(runs)}
    interval: dict[str, list[float]] = {}
    ci95: dict[str, Optional[float]] = {}
    for name in FIGURES:
        values = sorted(r[name] for r in runs if r.get(name) is not None)
        if not values:
            out[name] = None
            continue
        out[name] = statistics.median(values)
        interval[name] = [values[0], values[-1]]
        rel = median_ci(values)
        ci95[name] = rel if rel != float("inf") else None
    verdicts = [r.get("runtime_cache") for r in runs]
    out["runtime_cache"] = verdicts[0] if len(set(verdicts)) == 1 else "mixed: " + ", ".join(map(str, verdicts))
    out["evidence"] = list(dict.fromkeys(str(r.get("evidence")) for r in runs))
    out["interval"] = interval
    out["ci95_rel"] = ci95
    out["each"] = runs
    return out


def _private_dir(path: Path) -> Path:
    """A folder only this user reads: these hold code the runtimes load (compiled blobs, optimized models)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # reading it whole also leaves it in the OS page cache
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _machine_id() -> str:
    """The CPU the optimized files were made for (model name and flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    wanted = [next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags")]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


@dataclasses.dataclass
class Deployment:
    """What the children deploy: the artifact, its loader, and the runtime cache's folders."""

    loader: type
    artifact: Path
    spec: dict[str, Any]  # the children's common spec
    runtime: Optional[str] = None  # the runtime whose cache is used ("ort", "openvino"), else None
    shared: Optional[Path] = None  # the warm cache folder


def _aoti_package(cell: Any) -> Path:
    """The inductor cell's model as an AOTInductor package (``.pt2``), built once and cached: what one
    deploys instead of a JIT torch.compile, which needs the model's code and compiles at start-up."""
    import torch

    from ..cache import hash_parts
    from ..worklock import MachineLock

    model = cell.model
    shape = (cell.spec.batch_size, *model.info.input_shape)
    key = hash_parts("aoti", model.key, repr(shape), torch.__version__, "cpu")

    def build(tmp: Path) -> None:
        from .. import progress

        progress.update("AOTInductor package for the cold start (torch.export, aoti_compile_and_package)")
        module = model.built.module.eval()
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(module, (torch.randn(*shape),))
            with tempfile.TemporaryDirectory(prefix="cnnbench-aoti-") as folder:
                made = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(folder) / "model.pt2"))
                shutil.copyfile(made, tmp)

    with MachineLock("cpu").shared():
        path, _ = cell.bench.cache.get_or_build("aoti", key, ".pt2", build)
    return path


def deployment(cell: Any, prepared: Any, result: Any) -> Optional[Deployment]:
    """The cell's deployment, or None when it has no serialized artifact (eager, a backend without one)."""
    from .loaders import BUILTIN  # no runtime imported

    backend = cell.spec.backend
    loader = getattr(prepared, "deploy_loader", None) or BUILTIN.get(backend)
    if loader is None:
        return None
    if backend == "inductor" and getattr(prepared, "artifact_path", None) is None:
        artifact = _aoti_package(cell)
    else:
        found = getattr(prepared, "artifact_path", None)
        if found is None:
            return None
        artifact = Path(found)
    root = _private_dir(Path(cell.bench.cache.root) / "coldstart")
    spec = {"artifact": str(artifact), "input_shape": [cell.spec.batch_size, *cell.model.info.input_shape],
            "threads": result.threads, "precision": cell.spec.precision, "device": "cpu" if cell.device == "cpu" else "cuda",
            "device_index": result.gpu or 0, "loader_module": loader.__module__, "loader_name": loader.__qualname__,
            "loader_file": getattr(sys.modules.get(loader.__module__), "__file__", "") or ""}
    runtime = backend if loader is BUILTIN.get(backend) else None
    return with_runtime_cache(Deployment(loader, artifact, spec), runtime, root)


def with_runtime_cache(found: Deployment, runtime: Optional[str], root: Path) -> Deployment:
    """Where ``runtime``'s own cache lives for this artifact (none for runtimes without one)."""
    root = _private_dir(root)
    if runtime == "ort":
        found.runtime = "ort"
        found.shared = _private_dir(root / "ort-optimized")
        # The optimized model holds this CPU's kernels' layouts: one per source model, ONNX Runtime and CPU.
        name = hashlib.sha256("\n".join((_file_sha256(found.artifact), _version("onnxruntime"), _machine_id())).encode())
        found.spec["cache_file"] = str(found.shared / f"{name.hexdigest()[:32]}.onnx")
    elif runtime == "openvino":
        found.runtime = "openvino"  # OpenVINO keys its blobs itself (model, configuration, device, version)
        found.shared = _private_dir(root / f"openvino-cache-{_version('openvino')}")
    return found


def artifact_bytes(path: Path) -> int:
    size = path.stat().st_size
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():  # an OpenVINO IR is two files
        size += weights.stat().st_size
    return size


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One fresh interpreter (this venv's) deploying the artifact; its figures, or ``ColdStartError``.

    The caller must hold no timing lock: the child takes it. Nothing is inherited but the standard
    streams (``close_fds``); the child runs in its own process group, which a timeout kills whole."""
    from .. import worklock

    if getattr(worklock._held, "mode", None):
        raise RuntimeError("cold start: the parent holds the machine's timing lock; the child could never take it")
    spec = {**spec, "spawned_at": time.time()}
    flags = ["-P"] if sys.version_info >= (3, 11) else []  # not the coldstart folder first on sys.path
    process = subprocess.Popen([sys.executable, *flags, str(CHILD), json.dumps(spec)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, close_fds=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise ColdStartError(f"the child was killed after {timeout:g} s: it never answered") from None
    lines = [line for line in out.splitlines() if line.startswith(RESULT_MARKER)]
    if process.returncode != 0 or not lines:
        tail = [line for line in err.strip().splitlines() if line.strip()]
        why = tail[-1].strip() if tail else f"no output, exit status {process.returncode}"
        if process.returncode and process.returncode < 0:
            why = f"killed by signal {-process.returncode}" + (f" ({why})" if tail else "")
        raise ColdStartError(f"the child failed: {why}")
    record = json.loads(lines[-1][len(RESULT_MARKER):])
    record["first_answer_s"] = (record["interpreter_start_s"] + record["import_s"] + record["load_s"]
                                + record["first_inference_ms"] / 1e3)
    return record


def _publish(scratch: Path, shared: Path) -> None:
    """What a cold run's runtime wrote, into the warm folder (each file atomically; none replaced)."""
    for path in scratch.iterdir():
        target = shared / path.name
        if path.is_file() and not target.exists():
            os.replace(path, target)


def run_once(found: Deployment, kind: str, timeout: float) -> dict[str, Any]:
    """One child of ``kind``; its runtime's cache folder chosen for that kind."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=_private_dir(found.shared.parent / "scratch"))) \
        if found.shared is not None else None
    spec = dict(found.spec)
    if found.runtime == "openvino":
        spec["cache_dir"] = str(scratch if kind == "cold" else found.shared)
    elif found.runtime == "ort":
        spec["scratch_dir"] = str(scratch)
    spec["kind"] = kind
    _file_sha256(found.artifact)  # the OS page cache holds the artifact: both kinds start from there
    try:
        record = run_child(spec, timeout)
        if scratch is not None:
            _publish(scratch, found.shared)  # type: ignore[arg-type]
        record["kind"] = kind
        return record
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def measure(cell: Any, prepared: Any, result: Any, runs: int, timeout: float) -> ColdStartRecord:
    """The cell's cold start: ``runs`` cold and warm children, alternating; a failure ends the series."""
    found = deployment(cell, prepared, result)
    if found is None:
        return ColdStartRecord(status=NO_ARTIFACT)
    from .loaders import RUNTIME_CACHES

    record = ColdStartRecord(status="measured", loader=found.loader.__qualname__, artifact=str(found.artifact),
                             artifact_mb=artifact_bytes(found.artifact) / 2**20,
                             runtime_cache_kind=RUNTIME_CACHES.get(found.runtime or ""),
                             os_page_cache="warm: the parent read the artifact just before each child; "
                                           "the machine's caches were not dropped")
    done: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    from .. import progress

    try:
        for index in range(runs):
            for kind in KINDS:
                progress.update(f"cold start: {kind} child {index + 1} of {runs}")
                done[kind].append(run_once(found, kind, timeout))
    except ColdStartError as exc:
        record.status, record.error = "failed", str(exc)
    for kind in KINDS:
        if done[kind]:
            setattr(record, kind, {**summarize(done[kind]), "artifact_mb": record.artifact_mb})
    return record
