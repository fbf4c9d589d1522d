"""A user's own model, from a ``cnn_model`` fixture: turned into a model and its shapes, or a clear
reason why it cannot be benchmarked."""

from __future__ import annotations

from typing import Any

import torch

from .. import registry
from ..core import BuiltModel, CellSpec
from ..process_cache import ModelInfo, wrap_bare_module


class FixtureModelError(Exception):
    """What a user's ``cnn_model`` fixture gave cannot be benchmarked; the message names the fixture."""


def check_fixture_model(value: Any, spec: CellSpec, marker: dict[str, Any]) -> tuple[BuiltModel, ModelInfo]:
    """Turn what a user's ``cnn_model`` fixture returned into a model and its shapes, or say
    clearly why it cannot be benchmarked (naming the fixture and the dataset options)."""
    where = f"{spec.model_fixture} (param {spec.model!r})" if spec.model else str(spec.model_fixture)
    if not isinstance(value, (BuiltModel, torch.nn.Module)):
        raise FixtureModelError(f"{where} returned {type(value).__name__}, not a torch.nn.Module or a "
                                "pytest_cnnbench.BuiltModel; return the model to benchmark")
    if isinstance(value, BuiltModel) and not isinstance(value.module, torch.nn.Module):
        raise FixtureModelError(f"{where} returned a BuiltModel whose module is a {type(value.module).__name__}, "
                                "not a torch.nn.Module")
    if not spec.dataset:
        raise FixtureModelError(
            f"{where}: no dataset to feed the model: mark the test with @pytest.mark.cnnbench(dataset=...) or run with "
            f"--cnn-dataset=...; datasets: {', '.join(registry.datasets.names())}")
    dataset_meta = registry.datasets.get(spec.dataset).meta
    built = value if isinstance(value, BuiltModel) else wrap_bare_module(value, f"module from {spec.model_fixture}",
                                                                         spec.dataset)
    input_shape = built.input_shape or marker.get("input_shape") or dataset_meta.get("input_shape")
    if not input_shape:
        raise FixtureModelError(
            f"{where}: the {spec.dataset} dataset has no fixed input shape: give one with "
            "BuiltModel(..., input_shape=(C, H, W)) or @pytest.mark.cnnbench(input_shape=(C, H, W))")
    input_shape = tuple(int(d) for d in input_shape)
    try:
        with torch.inference_mode():
            out = built.module.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise FixtureModelError(f"{where}: the model fails on a batch of 2 inputs of shape {input_shape}: "
                                f"{type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FixtureModelError(f"{where}: for a batch of 2 inputs of shape {input_shape} the model returned {shape}; "
                                "a classifier must return logits of shape (batch, classes)")
    num_classes = int(built.num_classes or marker.get("num_classes") or out.shape[1])
    if out.shape[1] != num_classes:
        raise FixtureModelError(f"{where}: the model returns {out.shape[1]} logits per input but says it has "
                                f"{num_classes} classes")
    dataset_classes = dataset_meta.get("num_classes")
    if dataset_classes and num_classes != dataset_classes:
        raise FixtureModelError(f"{where}: the model predicts {num_classes} classes but the {spec.dataset} dataset "
                                f"has {dataset_classes}; choose a matching dataset")
    name = built.name or spec.model or type(built.module).__name__.lower()
    return built, ModelInfo(name, input_shape, num_classes)
