"""What suites assert on a measured cell (``cnnbench.check_*``): accuracy thresholds, agreement with
eager, the accuracy cost against the budget. Each reads the row and publishes it again with what it
found (notes, verdicts), then asserts."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest

from .. import results as R
from ..core import CellSpec

Publish = Callable[[], None]


def check_accuracy(result: R.CellResult, spec: CellSpec, settings: Any, publish: Publish,
                   min_top1: Optional[float] = None, min_top5: Optional[float] = None,
                   min_relative_to_eager: Optional[float] = None, rule: str = "") -> None:
    """Assert accuracy thresholds (fractions).

    Where accuracy means nothing (random weights, unlabelled data), nothing is asserted: the
    row says so ("accuracy not asserted: ..."), and the cell still passes on its other checks,
    unless ``--cnn-require-accuracy`` makes that a failure. ``rule`` says where ``min_top1``
    comes from, for the failure message.
    """
    if not result.accuracy_valid:
        why = "synthetic data has no real labels" if result.weights != "random" else "random weights"
        text = f"accuracy not asserted: {why}"
        result.accuracy_asserted = False
        if text not in result.notes:
            result.notes.append(text)
        publish()
        if settings.require_accuracy:
            detail = result.weights_note if result.weights == "random" else None
            pytest.fail(f"{text} (--cnn-require-accuracy)" + (f": {detail}" if detail else ""), pytrace=False)
        return
    result.accuracy_asserted = True
    publish()
    label = spec.id
    if min_top1 is not None:
        assert result.top1 >= min_top1, f"{label}: top-1 {result.top1:.4f} < {min_top1:.4f}" + (f" ({rule})" if rule else "")
    if min_top5 is not None and result.top5 is not None:
        assert result.top5 >= min_top5, f"{label}: top-5 {result.top5:.4f} < {min_top5}"
    eager = result.reference_top1
    if min_relative_to_eager is not None and eager:
        ratio = result.top1 / eager
        assert ratio >= min_relative_to_eager, (
            f"{label}: top-1 {result.top1:.4f} is {ratio:.2%} of eager's {eager:.4f} (< {min_relative_to_eager:.0%})")


def check_agreement(result: R.CellResult, spec: CellSpec, max_rel_err: float, min_top1_agree: float) -> None:
    """Assert the backend's logits match eager's: the check that holds even with random weights."""
    agree = result.agreement
    if spec.backend == "eager" and spec.precision == "fp32":
        return
    label = spec.id
    assert agree["rel_err"] <= max_rel_err, f"{label}: max relative logit error vs eager {agree['rel_err']:.2e} > {max_rel_err:.0e}"
    if agree["meaningful"]:
        assert agree["top1_agree"] >= min_top1_agree, f"{label}: top-1 agrees with eager on {agree['top1_agree']:.2%} < {min_top1_agree:.0%}"


def _judge_cost(label: str, cost: R.AccuracyCost, max_top1_drop_pp: float,
                max_top5_drop_pp: Optional[float]) -> tuple[dict[str, str], list[str], list[str]]:
    """Each asked limit's verdict, and the texts of those that exceed it and those still inconclusive."""
    from ..stats import EXCEEDS, INCONCLUSIVE, cost_verdict

    verdicts, failures, open_ = {}, [], []
    top5 = cost.top5 or {}
    for name, limit, delta, ci, eager_only, row_only in (
            ("top-1", max_top1_drop_pp, cost.delta_top1_pp, cost.ci95_pp, cost.eager_only, cost.row_only),
            ("top-5", max_top5_drop_pp, cost.delta_top5_pp, top5.get("ci95_pp"), top5.get("eager_only"),
             top5.get("row_only"))):
        if limit is None:
            continue
        assert delta is not None and ci is not None, f"{label}: no {name} figure to compare with eager fp32's"
        verdict = verdicts[name] = cost_verdict(ci[0], ci[1], limit)
        text = (f"{name} {delta:+.2f} pt vs eager fp32, 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}] ({cost.method}); "
                f"{eager_only} images right only in eager fp32, {row_only} only in this row, of {cost.n}; "
                f"allowed loss {limit:g} pt: {verdict}")
        if verdict == EXCEEDS:
            failures.append(text)
        elif verdict == INCONCLUSIVE:
            open_.append(text)
    return verdicts, failures, open_


def check_precision_cost(result: R.CellResult, spec: CellSpec, settings: Any, publish: Publish,
                         max_top1_drop_pp: float, max_top5_drop_pp: Optional[float] = None) -> None:
    """Judge this row's accuracy cost against eager fp32 on the same images, paired image by image:
    the 95% interval of the change in top-1 (and top-5) points against the loss allowed
    (``stats.cost_verdict``). *exceeds* fails; *within* passes; *inconclusive* (the interval
    straddles the allowance) passes with the verdict in the row, and fails with --cnn-strict.

    Nothing is skipped: where accuracy means nothing (random weights, unlabelled data) nothing is
    asserted and the row says so, as ``check_accuracy`` does (a failure with --cnn-require-accuracy)."""
    if not result.accuracy_valid:
        check_accuracy(result, spec, settings, publish)  # notes why (or fails with --cnn-require-accuracy); asserts nothing
        return
    cost: Optional[R.AccuracyCost] = result.accuracy_cost
    if cost is None:  # eager fp32: the reference itself
        return
    label = spec.id
    how = f"; calibration: {result.calibration}" if result.calibration else ""
    verdicts, failures, open_ = _judge_cost(label, cost, max_top1_drop_pp, max_top5_drop_pp)
    cost.check = {"max_top1_drop_pp": max_top1_drop_pp, "max_top5_drop_pp": max_top5_drop_pp, "verdict": verdicts}
    for text in open_:
        note = f"accuracy cost inconclusive: {text}"
        if note not in result.notes:
            result.notes.append(note)
    publish()
    if failures:
        pytest.fail(f"{label}: accuracy cost exceeds the allowance: " + "; ".join(failures) + how, pytrace=False)
    if open_ and settings.strict:
        pytest.fail(f"{label}: accuracy cost inconclusive (--cnn-strict): " + "; ".join(open_) + how, pytrace=False)
