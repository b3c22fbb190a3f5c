"""Preparation shared by the ranking losses: validation, flattening, the no-positive case."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ranking import IdentityUpdateResult, LogitGradient, working_dtype
from ._validation import check_finite, check_same_shape, check_tensor

__all__ = ["FlatBatch", "flatten_batch", "empty_result"]


@dataclass
class FlatBatch:
    """One batch flattened over images, anchors and classes (one ranking for all of it)."""

    scores: Tensor  # (N,) detached, working dtype
    targets: Tensor  # (N,)
    positive_index: Tensor  # (P,) int64, in targets.flatten() order
    negative_mask: Tensor  # (N,) bool

    @property
    def num_positives(self) -> int:
        return int(self.positive_index.numel())


def validate_logits_and_targets(logits: object, targets: object) -> tuple[Tensor, Tensor]:
    logits = check_tensor(logits, "logits", floating=True)
    targets = check_tensor(targets, "targets")
    check_same_shape(targets, "targets", logits, "logits")
    check_finite(logits, "logits")
    return logits, targets


def flatten_batch(scores: Tensor, targets: Tensor, *, continuous: bool = False) -> FlatBatch:
    """Flatten detached ``scores`` and ``targets``; positives are ``== 1`` (``> 0`` if continuous)."""
    flat_scores = scores.reshape(-1).to(working_dtype(scores.dtype))
    flat_targets = targets.reshape(-1)
    positive = flat_targets > 0 if continuous else flat_targets == 1
    positive_index = positive.nonzero().squeeze(1)
    negative_mask = flat_targets == 0
    return FlatBatch(flat_scores, flat_targets, positive_index, negative_mask)


def empty_result(batch: FlatBatch, num_values: int, auxiliary: tuple[Tensor, ...] = ()) -> IdentityUpdateResult:
    """No positive in the batch: every value is 0 and every gradient is 0 (still in the graph)."""
    zero = torch.zeros((), dtype=batch.scores.dtype, device=batch.scores.device)
    return IdentityUpdateResult(
        values=[zero.clone() for _ in range(num_values)],
        gradients=[LogitGradient() for _ in range(num_values)],
        auxiliary=auxiliary,
    )
