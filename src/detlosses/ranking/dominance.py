"""Kernel sums between positives restricted by a second key (Rank & Sort Loss's IoU order).

Rank & Sort Loss (Oksuz et al., ICCV 2021, Eq. 8) compares a positive ``i`` only with the
positives whose IoU target is at least its own:

    ``ge_i = sum_k [y_k >= y_i] w_k K(s_k - s_i)``

and, for the gradient, spreads errors over the positives ranked with a lower target:

    ``V_k = sum_i c_i [y_i > y_k] K(s_k - s_i)``.

These are sums over pairs of *positives* only (``P`` is small next to the ``N`` logits), evaluated
densely in float64, in blocks of query rows so that memory stays bounded: a handful of operators per
block instead of a loop over positives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import engine
from .kernels import PiecewisePolynomialKernel

__all__ = ["Dominance", "dominance_sums", "dominance_adjoint"]

# Elements of one block of the P x P pair matrix (float64): 128 MiB, one block up to 4096 positives
# (each block is a few more operators); on the CPU's fast path 32 MiB (larger temporaries cost more
# in memory traffic there than the operators they save: Rank & Sort at N = 16e6, P = 4000 took
# 1.6 s with one block against 1.3 s with four).
_BLOCK_ELEMENTS = 1 << 24
_CPU_BLOCK_ELEMENTS = 1 << 22


class Dominance:
    """The pairs ``(i, k)`` of positives with ``K(s_k - s_i)`` split by ``[y_k >= y_i]``.

    Args:
        scores: ``(P,)`` scores of the positives.
        keys: ``(P,)`` their second key (Rank & Sort: IoU targets).
        kernel: ``K``.
    """

    def __init__(self, scores: Tensor, keys: Tensor, kernel: PiecewisePolynomialKernel) -> None:
        self.scores = _float64(scores)
        self.keys = _float64(keys)
        self.kernel = kernel
        count = self.scores.numel()
        cpu = self.scores.device.type == "cpu" and engine.cpu_fast_paths_enabled()
        rows = max(1, (_CPU_BLOCK_ELEMENTS if cpu else _BLOCK_ELEMENTS) // max(count, 1))
        self.blocks = [slice(start, min(start + rows, count)) for start in range(0, count, rows)]
        self._cached: tuple[Tensor, Tensor] | None = None
        self._buffers: tuple[Tensor, Tensor] | None = None

    def _block(self, rows: slice, mask: str) -> tuple[Tensor, Tensor]:
        """``K(s_k - s_i)`` for the query rows ``i`` and the mask ``[y_k < y_i]`` (``"below"``) or
        ``[y_k >= y_i]`` (``"at_least"``). One block is kept for the adjoint (its mask "below");
        several are made again by the adjoint, in two buffers reused from block to block (fresh
        temporaries of this size cost page faults on the CPU)."""
        if self._cached is not None:
            return self._cached
        if len(self.blocks) == 1:  # every positive against every positive
            values = self.kernel.pairwise(self.scores, self.scores)
            self._cached = (values, self.keys[None, :] < self.keys[:, None])
            return self._cached
        if self._buffers is None:
            shape = (self.blocks[0].stop - self.blocks[0].start, self.scores.numel())
            self._buffers = (self.scores.new_empty(shape), torch.empty(shape, dtype=torch.bool,
                                                                         device=self.scores.device))
        count = rows.stop - rows.start
        values = self.kernel.pairwise(self.scores[rows], self.scores, out=self._buffers[0][:count])
        compare = torch.lt if mask == "below" else torch.ge
        return values, compare(self.keys[None, :], self.keys[rows, None], out=self._buffers[1][:count])

    def sums(self, weights: Tensor) -> Tensor:
        """``ge[i, c] = sum_k [y_k >= y_i] w_kc K(s_k - s_i)`` for ``(P, C)`` weights; float64."""
        w = _float64(weights)
        kept = len(self.blocks) == 1
        parts = []
        for rows in self.blocks:
            values, below = self._block(rows, "below")
            parts.append((torch.where(below, 0.0, values) if kept else values.masked_fill_(below, 0.0)) @ w)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def adjoint(self, coefficients: Tensor) -> Tensor:
        """``V_k = sum_i c_i [y_i > y_k] K(s_k - s_i)``; float64 ``(P,)``."""
        c = _float64(coefficients)
        kept = len(self.blocks) == 1
        total = None
        for rows in self.blocks:
            if kept:
                values, below = self._block(rows, "below")
                part = c @ torch.where(below, values, 0.0)
            else:
                values, at_least = self._block(rows, "at_least")
                part = c[rows] @ values.masked_fill_(at_least, 0.0)
            total = part if total is None else total + part
        return total


def _float64(values: Tensor) -> Tensor:
    """``values`` in float64 (no operator when they are)."""
    return values if values.dtype == torch.float64 else values.to(torch.float64)


def dominance_sums(scores: Tensor, keys: Tensor, kernel: PiecewisePolynomialKernel, weights: Tensor) -> Tensor:
    """``sum_k [y_k >= y_i] w_kc K(s_k - s_i)`` (see :class:`Dominance`)."""
    return Dominance(scores, keys, kernel).sums(weights)


def dominance_adjoint(scores: Tensor, keys: Tensor, kernel: PiecewisePolynomialKernel, coefficients: Tensor) -> Tensor:
    """``sum_i c_i [y_i > y_k] K(s_k - s_i)`` (see :class:`Dominance`)."""
    return Dominance(scores, keys, kernel).adjoint(coefficients)
