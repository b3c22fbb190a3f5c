"""Kernel sums between positives restricted by a second key (Rank & Sort Loss's IoU order).

Rank & Sort Loss (Oksuz et al., ICCV 2021, Eq. 8) compares a positive ``i`` only with the
positives whose IoU target is at least (or below) its own:

    ``ge_i = sum_k [y_k >= y_i] w_k K(s_k - s_i)``,   ``lt_i = sum_k [y_k < y_i] w_k K(s_k - s_i)``

and, for the gradient, the adjoint ``V_k = sum_i c_i [y_k < y_i] K(s_k - s_i)``.

These are two-dimensional (an order on ``y`` *and* a window on ``s``), so they are evaluated
densely over the ``P x P`` pairs, a block of rows at a time to bound memory at
``_BLOCK_ELEMENTS`` pairs. ``P`` is the number of positives, far smaller than the number of
logits, so this costs little next to the positive-negative sums of
:mod:`detlosses.ranking.windows`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import PiecewisePolynomialKernel

__all__ = ["dominance_sums", "dominance_adjoint"]

_BLOCK_ELEMENTS = 1 << 22


def _row_blocks(num_rows: int, num_cols: int) -> list[slice]:
    rows = max(1, _BLOCK_ELEMENTS // max(num_cols, 1))
    return [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


def dominance_sums(
    scores: Tensor, keys: Tensor, kernel: PiecewisePolynomialKernel, weights: Sequence[Tensor | None]
) -> tuple[list[Tensor], list[Tensor]]:
    """For each weight vector: (``sum_k [key_k >= key_i] w_k K(s_k - s_i)``, same with ``<``).

    All float64 ``(P,)``; a ``None`` weight means 1.
    """
    s = scores.to(torch.float64)
    y = keys.to(torch.float64)
    w = [None if v is None else v.to(torch.float64) for v in weights]
    ge = [torch.zeros_like(s) for _ in w]
    lt = [torch.zeros_like(s) for _ in w]
    for rows in _row_blocks(s.numel(), s.numel()):
        k = kernel(s[None, :] - s[rows, None])  # (B, P): K(s_k - s_i)
        upper = y[None, :] >= y[rows, None]
        k_ge = torch.where(upper, k, 0.0)
        k_lt = k - k_ge
        for j, wj in enumerate(w):
            if wj is None:
                ge[j][rows] = k_ge.sum(1)
                lt[j][rows] = k_lt.sum(1)
            else:
                ge[j][rows] = k_ge @ wj
                lt[j][rows] = k_lt @ wj
    return ge, lt


def dominance_adjoint(
    scores: Tensor, keys: Tensor, kernel: PiecewisePolynomialKernel, coefficients: Tensor
) -> Tensor:
    """``V_k = sum_i c_i [key_k < key_i] K(s_k - s_i)``, float64 ``(P,)``."""
    s = scores.to(torch.float64)
    y = keys.to(torch.float64)
    c = coefficients.to(torch.float64)
    out = torch.zeros_like(s)
    active = (c != 0).nonzero().squeeze(1)  # only rows with a coefficient contribute
    if active.numel() == 0:
        return out
    s_i, y_i, c_i = s[active], y[active], c[active]
    for rows in _row_blocks(active.numel(), s.numel()):
        k = kernel(s[None, :] - s_i[rows, None])  # (B, P): K(s_k - s_i)
        lower = y[None, :] < y_i[rows, None]
        out += torch.where(lower, k, 0.0).T @ c_i[rows]
    return out
