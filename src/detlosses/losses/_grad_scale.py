"""Scale the gradient that flows through a tensor, leaving its value unchanged."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scale_gradient"]


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def scale_gradient(value: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``factor``.

    Parameterized AP Loss trains the boxes only through the soft IoU ``u`` and multiplies the
    box-branch gradient by ``reg_weight`` (Tao et al., 2021); this is that multiplication.
    """
    return _ScaleGradient.apply(value, float(factor))
