"""The torch.export side of the TensorRT backend, in plain torch (so it runs, and is tested, on the CPU).

torch-tensorrt's dynamo frontend compiles an ``ExportedProgram`` and saves the compiled
module by exporting it again. Both exports decide which batch sizes the result accepts:

- ``torch.export`` specializes a dimension whose example size is 1 to the constant 1
  ("Constraints violated ... specialized it to be a constant (1)"), even when it is
  declared dynamic. torch-tensorrt's own ``trace`` builds its example from the profile's
  ``opt_shape``, so an engine optimized for batch 1 could not be built at all. Here the
  example batch is at least 2 and the ``Dim`` spans 1..max_batch.
- A program exported without ``dynamic_shapes`` guards on the example's batch
  ("Guard failed: input.size()[0] == 1"), so a cached engine saved that way loads but
  rejects every other batch. Saving passes the same dynamic batch axis, and a loaded
  program is only used once it has accepted the smallest and largest batch of its profile.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from ..cache import ArtifactCache

SUFFIX = ".pt2"  # torch.export.save/load warn about any other suffix
MIN_EXAMPLE_BATCH = 2  # torch.export specializes size-1 dimensions


def example_batch(max_batch: int, opt_batch: int = MIN_EXAMPLE_BATCH) -> int:
    """The batch size of the example input for export: ``opt_batch``, but never 1 when the batch axis is
    dynamic. (torch-tensorrt 2.14 takes an engine's optimization-profile ``opt`` from this example.)"""
    return min(max(opt_batch, MIN_EXAMPLE_BATCH), max_batch)


def batch_dynamic_shapes(max_batch: int) -> Optional[tuple[dict[int, Any]]]:
    """``dynamic_shapes`` for a module with one positional input whose axis 0 is the batch (1..max_batch);
    None (static) when max_batch is 1."""
    if max_batch < 2:
        return None
    return ({0: torch.export.Dim("batch", min=1, max=max_batch)},)


def example_input(input_shape: tuple[int, ...], max_batch: int, device: Any = "cpu",
                  dtype: torch.dtype = torch.float32, opt_batch: int = MIN_EXAMPLE_BATCH) -> torch.Tensor:
    return torch.randn(example_batch(max_batch, opt_batch), *input_shape, device=device, dtype=dtype)


def export_dynamic_batch(module: torch.nn.Module, input_shape: tuple[int, ...], max_batch: int,
                         device: Any = "cpu", dtype: torch.dtype = torch.float32,
                         opt_batch: int = MIN_EXAMPLE_BATCH) -> torch.export.ExportedProgram:
    """Export ``module`` so that the program accepts every batch size from 1 to ``max_batch``."""
    example = example_input(input_shape, max_batch, device, dtype, opt_batch)
    return torch.export.export(module, (example,), dynamic_shapes=batch_dynamic_shapes(max_batch))


def save_pt2(save: Callable[[str], Any], target: Path) -> None:
    """Run ``save(path)`` on a path that ends in ``.pt2`` and move the file onto ``target``.

    ``ArtifactCache.store`` hands its writer a temporary name ending in ``.tmp``, and torch warns
    on every save and load of a program whose name does not end in ``.pt2``.
    """
    staged = Path(target).with_name(Path(target).name + SUFFIX)
    try:
        save(str(staged))
        os.replace(staged, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


def batch_range_problem(call: Callable[[torch.Tensor], Any], input_shape: tuple[int, ...], batches: Iterable[int],
                        device: Any = "cpu", dtype: torch.dtype = torch.float32) -> Optional[str]:
    """None if ``call`` runs every batch size in ``batches``; otherwise which one failed, and how."""
    for batch in batches:
        try:
            with torch.inference_mode():
                call(torch.zeros(batch, *input_shape, device=device, dtype=dtype))
        except Exception as exc:  # a shape guard (AssertionError), an engine profile error (RuntimeError), ...
            first_line = (str(exc).strip().splitlines() or [""])[0]
            return f"it rejects batch size {batch} ({type(exc).__name__}: {first_line})"
    return None


def load_validated(cache: ArtifactCache, kind: str, key: str, suffix: str, load: Callable[[Path], Any],
                   problem: Callable[[Any], Optional[str]]) -> Optional[tuple[Any, Path]]:
    """A cached artifact, loaded and checked; None when there is none or it is unusable.

    An entry that does not load, or that loads but fails ``problem`` (e.g. a program whose
    batch axis is static), is discarded with a warning, so the caller rebuilds it.
    """
    path = cache.lookup(kind, key, suffix)
    if path is None:
        return None
    try:
        loaded = load(path)
    except Exception as exc:  # another build's engine, or corrupt despite its checksum
        cache.discard(path, f"does not load: {type(exc).__name__}: {exc}")
        return None
    why = problem(loaded)
    if why:
        cache.discard(path, why)
        return None
    return loaded, path
