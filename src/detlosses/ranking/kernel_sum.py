"""Differentiable kernel sums ``F_i = sum_j w_j K(x_j - q_i)`` (autograd through x, w and q).

Parameterized AP Loss (Tao et al., 2021) is trained by plain autograd through its
piecewise-linear ``H2``. Its dense form builds the ``P x N`` matrix ``K(x_j - q_i)``; here the
forward and all three gradients are evaluated by an *evaluator* without that matrix:

* ``dF_i/dx_j = w_j K'(x_j - q_i)`` → ``grad_x_j = w_j sum_i g_i K'(x_j - q_i)`` (adjoint sum),
* ``dF_i/dw_j = K(x_j - q_i)``      → ``grad_w_j = sum_i g_i K(x_j - q_i)``      (adjoint sum),
* ``dF_i/dq_i = -sum_j w_j K'(x_j - q_i)``                                        (forward sum).

:class:`WindowEvaluator` does this exactly in ``O((N + P) log P)`` for piecewise-polynomial
kernels (:mod:`.windows`); :class:`DenseEvaluator` handles any smooth kernel (the ``sigmoid``
baseline) by blocks of queries in ``O(P N)`` time and bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .kernels import PiecewisePolynomialKernel
from .windows import BucketedPoints, SortedWindows, working_dtype

__all__ = ["WindowEvaluator", "DenseEvaluator", "kernel_sum"]

_DENSE_BLOCK_ELEMENTS = 1 << 22


class WindowEvaluator:
    """Exact sums for a piecewise-polynomial kernel over bucketed points.

    Args:
        windows: windows of the (detached) queries; the kernel must share their breakpoints.
        points: ``windows.points(buckets, scores)`` of the detached point scores (excluded points
            in the dump bucket).
        kernel: ``K`` (its derivative is taken on the same regions).
    """

    def __init__(self, windows: SortedWindows, points: BucketedPoints, kernel: PiecewisePolynomialKernel) -> None:
        self.windows = windows
        self.points = points
        self.kernels = {"value": kernel, "derivative": kernel.derivative()}

    def query_sums(self, which: str, weights: Tensor | None) -> Tensor:
        return self.windows.query_sums(self.points, [self.kernels[which]], weights)[0]

    def point_sums(self, which: str, coefficients: Tensor) -> Tensor:
        return self.windows.point_sums(self.points, self.kernels[which], coefficients)


class DenseEvaluator:
    """Sums for any elementwise kernel, by blocks of queries (``O(P N)`` time).

    Args:
        queries: detached query scores ``(P,)``.
        points: detached point scores ``(M,)``.
        value: ``K(d)``, elementwise.
        derivative: ``K'(d)``, elementwise.
    """

    def __init__(
        self,
        queries: Tensor,
        points: Tensor,
        value: Callable[[Tensor], Tensor],
        derivative: Callable[[Tensor], Tensor],
    ) -> None:
        self.queries = queries.to(torch.float64)
        self.points = points.to(torch.float64)
        self.functions = {"value": value, "derivative": derivative}
        rows = max(1, _DENSE_BLOCK_ELEMENTS // max(self.points.numel(), 1))
        self.blocks = [slice(s, min(s + rows, self.queries.numel())) for s in range(0, self.queries.numel(), rows)]

    def query_sums(self, which: str, weights: Tensor | None) -> Tensor:
        fn = self.functions[which]
        w = None if weights is None else weights.to(torch.float64)
        out = torch.empty_like(self.queries)
        for rows in self.blocks:
            k = fn(self.points[None, :] - self.queries[rows, None])
            out[rows] = k.sum(1) if w is None else k @ w
        return out

    def point_sums(self, which: str, coefficients: Tensor) -> Tensor:
        fn = self.functions[which]
        c = coefficients.to(torch.float64)
        out = torch.zeros_like(self.points)
        for rows in self.blocks:
            out += fn(self.points[None, :] - self.queries[rows, None]).T @ c[rows]
        return out


class _KernelSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points: Tensor, weights: Tensor | None, queries: Tensor, evaluator) -> Tensor:  # type: ignore[override]
        ctx.evaluator = evaluator
        ctx.has_weights = weights is not None
        ctx.dtypes = (points.dtype, None if weights is None else weights.dtype, queries.dtype)
        detached_weights = None if weights is None else weights.detach()
        ctx.save_for_backward(detached_weights if detached_weights is not None else torch.empty(0))
        out = evaluator.query_sums("value", detached_weights)
        return out.to(working_dtype(queries.dtype))

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        evaluator = ctx.evaluator
        (saved,) = ctx.saved_tensors
        weights = saved if ctx.has_weights else None
        g = grad_out.to(torch.float64)
        points_dtype, weights_dtype, queries_dtype = ctx.dtypes
        grad_points = grad_weights = grad_queries = None
        if ctx.needs_input_grad[0]:
            grad_points = evaluator.point_sums("derivative", g)
            if weights is not None:
                grad_points = grad_points * weights.to(grad_points.dtype)
            grad_points = grad_points.to(points_dtype)
        if ctx.needs_input_grad[1] and weights is not None:
            grad_weights = evaluator.point_sums("value", g).to(weights_dtype)
        if ctx.needs_input_grad[2]:
            grad_queries = (-g * evaluator.query_sums("derivative", weights)).to(queries_dtype)
        return grad_points, grad_weights, grad_queries, None


def kernel_sum(points: Tensor, weights: Tensor | None, queries: Tensor, evaluator) -> Tensor:
    """``F_i = sum_j w_j K(x_j - q_i)`` with gradients to ``points``, ``weights`` and ``queries``.

    ``evaluator`` (:class:`WindowEvaluator` or :class:`DenseEvaluator`) must have been built from
    the detached values of ``points`` and ``queries``.
    """
    return _KernelSum.apply(points, weights, queries, evaluator)
