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
