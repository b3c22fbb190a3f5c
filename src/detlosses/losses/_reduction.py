"""mmdetection-style reduction: element weights, ``reduction`` and ``avg_factor``."""

from __future__ import annotations

import torch
from torch import Tensor

from ._validation import Check, check_nonnegative_scalar, check_tensor, fused_checks

__all__ = ["REDUCTIONS", "check_reduction", "weight_reduce_loss", "avg_factor_checks", "reduce_weighted",
           "shaped_weight"]

REDUCTIONS = ("none", "mean", "sum")
_EPS = torch.finfo(torch.float32).eps  # the smallest avg_factor divided by (mmdetection's eps)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def shaped_weight(weight: object, like: Tensor, like_name: str) -> tuple[Tensor | None, list[Check]]:
    """An mmdetection ``weight`` for a loss shaped like ``like``: of that shape, or one per row
    (``like.shape[:-1]``: per anchor over its classes, per box over its four deltas, as mmdetection
    views an ``(N,)`` weight as ``(N, 1)``), returned as a view that broadcasts; anything else is an
    error, never a broadcast along the wrong dimension (``(3,)`` against ``(3, 3)`` would scale the
    classes). Also returns the value check of the weights (finite, ``>= 0``), to read back with the
    loss's own checks. No weight: ``(None, [])``."""
    if weight is None:
        return None, []
    weight = check_tensor(weight, "weight")
    if weight.shape != like.shape:
        if like.dim() < 1 or weight.shape != like.shape[:-1]:
            raise ValueError(f"weight must have the shape of {like_name} {tuple(like.shape)} or "
                             f"{tuple(like.shape[:-1])}, got {tuple(weight.shape)}")
        weight = weight.unsqueeze(-1)
    checks = [] if weight.dtype == torch.bool else [(weight, "weight", "nonnegative")]
    return weight, checks


def avg_factor_checks(avg_factor: float | Tensor | None, reduction: str) -> list[Check]:
    """The value check of a tensor ``avg_factor`` that ``reduction`` uses, to read back with a loss's
    other checks (:func:`~._validation.fused_checks`); a number is checked here and now."""
    if avg_factor is None or reduction != "mean":
        return []
    if isinstance(avg_factor, Tensor):
        return [(avg_factor.reshape(-1), "avg_factor", "nonnegative")]
    check_nonnegative_scalar(avg_factor, "avg_factor")
    return []


def weight_reduce_loss(
    loss: Tensor, weight: Tensor | None = None, reduction: str = "mean", avg_factor: float | Tensor | None = None
) -> Tensor:
    """Multiply by ``weight`` (broadcast), then reduce.

    ``reduction="mean"`` with ``avg_factor`` divides the sum by ``avg_factor`` (e.g. the number of
    positives), as mmdetection does; ``"sum"`` with an ``avg_factor`` is an error. The mean of no
    element is 0 (mmdetection's box losses return ``pred.sum() * 0`` for no positive), not NaN.
    ``avg_factor`` (a number or a tensor) must be finite and ``>= 0``: a negative one is an error,
    and one below float32's epsilon counts as that epsilon, as mmdetection's ``avg_factor + eps``
    (0 where every element is ignored: the sum is 0, so is the loss), never a division by 0.
    """
    check_reduction(reduction)
    fused_checks(*avg_factor_checks(avg_factor, reduction))
    return reduce_weighted(loss, weight, reduction, avg_factor)


def reduce_weighted(loss: Tensor, weight: Tensor | None, reduction: str, avg_factor: float | Tensor | None) -> Tensor:
    """:func:`weight_reduce_loss` of a loss that has checked ``avg_factor`` with its other values."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean() if loss.numel() else loss.sum()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "none":
        return loss
    if reduction != "mean":
        raise ValueError('avg_factor can only be used with reduction="mean" or "none"')
    if isinstance(avg_factor, Tensor):
        return loss.sum() / avg_factor.clamp(min=_EPS)
    return loss.sum() / max(float(avg_factor), _EPS)
