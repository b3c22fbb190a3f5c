"""The error-driven ("identity") update used by AP-Loss, aLRP Loss and Rank & Sort Loss.

These losses are not differentiated by autograd (their ranking function is a step). Following
Chen et al. (CVPR 2019, Sec. 3.2) and Oksuz et al. (NeurIPS 2020, ICCV 2021), the forward pass
computes the loss values *and* the gradient of every logit; the backward pass returns, for each
output, that gradient times the incoming gradient of the output.

A gradient is kept in the compact form :class:`LogitGradient`: an optional dense part over every
entry plus values at a few positions (the positives), so a loss whose second output touches only
the positives (Rank & Sort's sorting term) does not hold a second dense tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LogitGradient", "IdentityUpdateResult", "identity_update"]


@dataclass
class LogitGradient:
    """Gradient of one loss output w.r.t. the flattened logits.

    Attributes:
        dense: ``(N,)`` gradient of every entry, or ``None`` if zero outside ``index``.
        index: ``(P,)`` positions whose gradient is ``values`` (added to ``dense``), or ``None``.
        values: ``(P,)`` gradient at ``index``.
    """

    dense: Tensor | None = None
    index: Tensor | None = None
    values: Tensor | None = None


@dataclass
class IdentityUpdateResult:
    """What a loss computation returns: differentiable values, their gradients, extra outputs."""

    values: Sequence[Tensor]
    gradients: Sequence[LogitGradient]
    auxiliary: Sequence[Tensor] = field(default_factory=tuple)


Computation = Callable[[Tensor, bool], IdentityUpdateResult]


class _IdentityUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, computation: Computation) -> tuple[Tensor, ...]:  # type: ignore[override]
        result = computation(logits.detach(), bool(ctx.needs_input_grad[0]))
        if len(result.values) != len(result.gradients):
            raise RuntimeError("a loss computation must return one gradient per value")
        ctx.gradients = list(result.gradients)
        ctx.logit_shape = logits.shape
        ctx.logit_dtype = logits.dtype
        auxiliary = tuple(result.auxiliary)
        if auxiliary:
            ctx.mark_non_differentiable(*auxiliary)
        return (*tuple(result.values), *auxiliary)

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor):  # type: ignore[override]
        gradients: list[LogitGradient] = ctx.gradients
        numel = 1
        for size in ctx.logit_shape:
            numel *= size
        total: Tensor | None = None
        sparse: list[tuple[Tensor, Tensor]] = []
        for upstream, grad in zip(grad_outputs[: len(gradients)], gradients, strict=True):
            if upstream is None:
                continue
            if grad.dense is not None:
                scaled = grad.dense * upstream.to(grad.dense.dtype)
                total = scaled if total is None else total.add_(scaled)
            if grad.index is not None and grad.values is not None and grad.index.numel():
                sparse.append((grad.index, grad.values * upstream.to(grad.values.dtype)))
        if total is None:
            dtype = sparse[0][1].dtype if sparse else ctx.logit_dtype
            device = sparse[0][1].device if sparse else grad_outputs[0].device
            total = torch.zeros(numel, dtype=dtype, device=device)
        for index, values in sparse:
            total.index_add_(0, index, values.to(total.dtype))
        return total.to(ctx.logit_dtype).view(ctx.logit_shape), None


def identity_update(logits: Tensor, computation: Computation) -> tuple[Tensor, ...]:
    """Run ``computation(logits.detach(), needs_grad)`` with the identity update as its backward.

    Returns the values followed by the (non-differentiable) auxiliary outputs.
    """
    return _IdentityUpdate.apply(logits, computation)
