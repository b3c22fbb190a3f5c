"""mmdetection-style reduction: element weights, ``reduction`` and ``avg_factor``."""

from __future__ import annotations

from torch import Tensor

__all__ = ["REDUCTIONS", "check_reduction", "weight_reduce_loss"]

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def weight_reduce_loss(
    loss: Tensor, weight: Tensor | None = None, reduction: str = "mean", avg_factor: float | Tensor | None = None
) -> Tensor:
    """Multiply by ``weight`` (broadcast), then reduce.

    ``reduction="mean"`` with ``avg_factor`` divides the sum by ``avg_factor`` (e.g. the number of
    positives), as mmdetection does; ``"sum"`` with an ``avg_factor`` is an error.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "mean":
        return loss.sum() / avg_factor
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can only be used with reduction="mean" or "none"')
