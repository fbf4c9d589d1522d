"""Accuracy and agreement: what a backend's logits say against the labels and against eager's."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch

from . import progress


@dataclasses.dataclass
class Accuracy:
    logits: torch.Tensor
    top1: float
    top5: Optional[float]
    samples: int


def evaluate(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             num_classes: Optional[int] = None) -> Accuracy:
    """Run every sample through ``run`` in large batches; top-1/top-5 as fractions.
    Progress advances after each batch."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out = run(batch)
        expected = (len(batch), num_classes if num_classes is not None else (out.shape[-1] if out.ndim else 0))
        if tuple(out.shape) != expected:
            raise RuntimeError(f"backend returned logits of shape {tuple(out.shape)} for {len(batch)} samples; expected {expected}")
        chunks.append(out.float())
        progress.update(done=start + len(batch), total=len(images), detail="images")
    logits = torch.cat(chunks)
    return accuracy_from_logits(logits, labels)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    top1 = float((logits.argmax(1) == labels).float().mean())
    top5 = None
    if logits.shape[1] >= 5:
        top5 = float((logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean())
    return Accuracy(logits, top1, top5, len(labels))


@dataclasses.dataclass
class Agreement:
    rel_err: float  # max |logits - reference| / max |reference|
    top1_agree: float  # fraction of samples whose top-1 class matches the reference
    meaningful: bool  # False when the reference predicts one class for (nearly) everything
    distinct_predictions: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> Agreement:
    ref = reference.float()
    scale = float(ref.abs().max()) or 1.0
    rel = float((logits.float() - ref).abs().max()) / scale
    ref_top1 = ref.argmax(1)
    agree = float((logits.argmax(1) == ref_top1).float().mean())
    distinct = int(ref_top1.unique().numel())
    # With one dominant class, top-1 agreement is trivially ~100% and tells nothing.
    dominant = float(torch.bincount(ref_top1).max()) / len(ref_top1)
    return Agreement(rel, agree, distinct > 1 and dominant < 0.5, distinct)


def paired_counts(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor,
                  k: int = 1) -> Optional[tuple[int, int, int, int]]:
    """Image by image, top-``k`` right in both, in ``logits`` only, in ``reference`` only, in neither
    (the paired 2x2 table of ``stats.paired_difference``); None with fewer than ``k`` classes."""
    if logits.shape[1] < k:
        return None

    def right(scores: torch.Tensor) -> torch.Tensor:
        return (scores.float().topk(k, dim=1).indices == labels[:, None]).any(1)

    row, ref = right(logits), right(reference)
    return (int((row & ref).sum()), int((row & ~ref).sum()), int((~row & ref).sum()), int((~row & ~ref).sum()))


TRAINED_WEIGHTS = ("pretrained", "trained", "file")  # weights that should beat chance on their own data
SHIFT_SIGNAL = 0.5  # a shifted or reordered labelling explains at least this share of the predictions


def near_chance_warning(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        dataset: str = "") -> Optional[str]:
    """A warning when trained weights score near chance on labelled data, naming the likely cause.

    Near chance: top-1 at most three times chance (and at most 2%, for 1000 classes: a sample of
    ImageNet). Then the predictions are compared with the labels shifted by one either way (a
    1-based class_index) and with any consistent relabelling (a class_index in another order, such
    as the ILSVRC devkit's): where that explains most predictions, the labels are wrong, not the
    model, and every row's top-1 with them (eager's too, so no row stands out)."""
    count = len(labels)
    if count < 20 or num_classes < 2:
        return None
    chance = 1.0 / num_classes
    top1 = float((predictions == labels).float().mean())
    if top1 > max(3 * chance, 0.02):
        return None
    head = (f"top-1 {top1:.1%} on {count} labelled images is near chance ({chance:.1%}) for trained weights: "
            f"the labels, not the model, are the likely fault")
    for shift, how in ((-1, "1-based (counted from 1, where class indices count from 0)"),
                       (1, "shifted down by one")):
        matched = float((predictions == (labels + shift) % num_classes).float().mean())
        if matched >= SHIFT_SIGNAL:
            return (f"{head}: {matched:.0%} of the predictions are the label {'minus' if shift < 0 else 'plus'} one, "
                    f"so the labels look {how}")
    devkit = ""
    if dataset == "imagenet":
        devkit = (" (for ImageNet: a class_index in the ILSVRC devkit's order, ILSVRC2012_ID, 1-based, instead of "
                  "the 0-based order of the sorted WordNet ids; give the wnid column instead)")
    distinct = labels.unique()
    if count >= 3 * len(distinct):  # enough images per class to see a consistent relabelling
        mapped = 0
        for label in distinct.tolist():
            chosen = predictions[labels == label]
            mapped += int(torch.bincount(chosen).max())
        if mapped / count >= SHIFT_SIGNAL:
            return (f"{head}: each label is mostly predicted as one other class ({mapped / count:.0%} of the images), "
                    f"so the labels look like another class order{devkit}")
    return (f"{head}: a 1-based or reordered class index{devkit}, or labels of another dataset, are the usual causes")
