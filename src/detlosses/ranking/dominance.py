"""Kernel sums between positives restricted by a second key (Rank & Sort Loss's IoU order).

Rank & Sort Loss (Oksuz et al., ICCV 2021, Eq. 8) compares a positive ``i`` only with the
positives whose IoU target is at least (or below) its own:

    ``ge_i = sum_k [y_k >= y_i] w_k K(s_k - s_i)``,   ``lt_i = sum_k [y_k < y_i] w_k K(s_k - s_i)``

and, for the gradient, the adjoint ``V_k = sum_i c_i [y_i > y_k] K(s_k - s_i)``.

These combine an order on ``y`` with a window on ``s``. Sorted by ``y``, each restriction is a
suffix (or prefix) of the positives, and a suffix is the union of at most one aligned block per
level of a binary tree over that order (``O(log P)`` blocks). For every level the positives are
sorted by (block, score) once, with prefix sums of the weighted moments; each query then reads
its block's window sums with a few binary searches on integer keys (scores replaced by their
exact rank among all scores and window edges, so ties are honoured bit for bit).
Total ``O(P log^2 P)`` time and ``O(P)`` memory per level, with a loop over the ``log P`` levels
only (a merge-sort tree evaluated level by level). Below ``DENSE_MAX_POSITIVES`` positives the
``P x P`` pairs are evaluated directly instead, which is faster at that size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import PiecewisePolynomialKernel
from .windows import combine_region_moments

__all__ = ["ordered_window_sums", "dominance_sums", "dominance_adjoint", "DENSE_MAX_POSITIVES"]

DENSE_MAX_POSITIVES = 384


def _block_bounds(
    keys_sorted: Tensor, node: Tensor, edge_ranks: Tensor, scale: int, closed_right: bool
) -> Tensor:
    """``(Q, R + 1)`` positions delimiting each query's regions inside its block ``node``."""
    base = node * scale
    lo = torch.searchsorted(keys_sorted, base)
    hi = torch.searchsorted(keys_sorted, base + scale)
    # "at or above edge e": s > e (left-closed) or s >= e (right-closed)
    cuts = torch.searchsorted(keys_sorted, base[:, None] + edge_ranks, right=not closed_right)
    return torch.cat([lo[:, None], cuts, hi[:, None]], dim=1)


def ordered_window_sums(
    point_values: Tensor,
    point_positions: Tensor,
    weights: Sequence[Tensor | None],
    query_values: Tensor,
    kernel: PiecewisePolynomialKernel,
    *,
    suffix_from: Tensor | None = None,
    prefix_to: Tensor | None = None,
) -> dict[str, list[Tensor]]:
    """Kernel sums over a suffix and/or prefix of the points in a fixed order.

    Computes, for each query ``i`` and weight vector ``w``,
    ``sum_{k : pos_k >= suffix_from_i} w_k K(x_k - q_i)`` (key ``"suffix"``) and
    ``sum_{k : pos_k < prefix_to_i} w_k K(x_k - q_i)`` (key ``"prefix"``), float64.

    Args:
        point_values: ``(M,)`` scores ``x_k``.
        point_positions: ``(M,)`` distinct positions ``0..M-1`` of the points in the order.
        weights: weight vectors (``None`` = 1).
        query_values: ``(Q,)`` scores ``q_i``.
        kernel: piecewise-polynomial kernel.
        suffix_from, prefix_to: ``(Q,)`` int64 in ``[0, M]``.
    """
    device = point_values.device
    x = point_values.to(torch.float64)
    q = query_values.to(torch.float64)
    num_points = x.numel()
    out: dict[str, list[Tensor]] = {}
    modes = [(name, limit) for name, limit in (("suffix", suffix_from), ("prefix", prefix_to)) if limit is not None]
    for name, _ in modes:
        out[name] = [torch.zeros_like(q) for _ in weights]
    if num_points == 0 or q.numel() == 0 or not modes:
        return out

    offsets = torch.tensor(kernel.breakpoints, dtype=torch.float64, device=device)
    edges = q[:, None] + offsets[None, :]  # (Q, m + 1)
    universe = torch.sort(torch.cat([x, edges.reshape(-1)])).values
    point_ranks = torch.searchsorted(universe, x)
    edge_ranks = torch.searchsorted(universe, edges)
    scale = universe.numel() + 1

    centre = universe[universe.numel() // 2]
    centred = x - centre
    degree = kernel.degree
    moment_terms = []
    for w in weights:
        w64 = torch.ones_like(x) if w is None else w.to(torch.float64)
        moment_terms.append([w64 * centred**p for p in range(degree + 1)])
    q_centred = q - centre

    levels = max(1, (num_points - 1).bit_length()) if num_points > 1 else 0
    positions = point_positions.to(torch.int64)
    for level in range(levels + 1):
        block = positions >> level
        keys = block * scale + point_ranks
        keys_sorted, order = torch.sort(keys)
        prefix_sums = []
        for terms in moment_terms:
            sums = []
            for term in terms:
                ordered = term[order]
                sums.append(torch.cat([ordered.new_zeros(1), ordered.cumsum(0)]))
            prefix_sums.append(sums)
        for name, limit in modes:
            limit = limit.to(torch.int64)
            if name == "suffix":
                if level < levels:
                    node = (limit + (1 << level) - 1) >> level
                    include = (node & 1) == 1
                else:
                    node = torch.zeros_like(limit)
                    include = limit == 0
            else:
                if level < levels:
                    include = ((limit >> level) & 1) == 1
                    node = (limit >> level) - 1
                else:
                    node = torch.zeros_like(limit)
                    include = limit >= (1 << levels)
            chosen = include.nonzero().squeeze(1)
            if chosen.numel() == 0:
                continue
            bounds = _block_bounds(keys_sorted, node[chosen], edge_ranks[chosen], scale, kernel.closed_right)
            upper, lower = bounds[:, 1:], bounds[:, :-1]
            for index, sums in enumerate(prefix_sums):
                moments = [p[upper] - p[lower] for p in sums]
                out[name][index].index_add_(0, chosen, combine_region_moments(moments, q_centred[chosen], kernel))
    return out


def _order_by_key(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of each element in ascending key order, and the sorted keys."""
    sorted_keys, order = torch.sort(keys, stable=True)
    positions = torch.empty_like(order)
    positions[order] = torch.arange(order.numel(), device=order.device)
    return positions, sorted_keys


def dominance_sums(
    scores: Tensor,
    keys: Tensor,
    kernel: PiecewisePolynomialKernel,
    weights: Sequence[Tensor | None],
    *,
    dense: bool | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """For each weight vector: (``sum_k [key_k >= key_i] w_k K(s_k - s_i)``, same with ``<``).

    All float64 ``(P,)``; a ``None`` weight means 1. ``dense=None`` picks the faster evaluation.
    """
    y = keys.to(torch.float64)
    if dense if dense is not None else y.numel() <= DENSE_MAX_POSITIVES:
        s = scores.to(torch.float64)
        k = kernel(s[None, :] - s[:, None])  # (P, P): K(s_k - s_i)
        k_ge = torch.where(y[None, :] >= y[:, None], k, 0.0)
        k_lt = k - k_ge
        w = [torch.ones_like(s) if v is None else v.to(torch.float64) for v in weights]
        return [k_ge @ v for v in w], [k_lt @ v for v in w]
    positions, sorted_keys = _order_by_key(y)
    first = torch.searchsorted(sorted_keys, y)  # first position with key == y_i
    sums = ordered_window_sums(scores, positions, weights, scores, kernel, suffix_from=first, prefix_to=first)
    return sums["suffix"], sums["prefix"]


def dominance_adjoint(
    scores: Tensor,
    keys: Tensor,
    kernel: PiecewisePolynomialKernel,
    coefficients: Tensor,
    *,
    dense: bool | None = None,
) -> Tensor:
    """``V_k = sum_i c_i [key_k < key_i] K(s_k - s_i)``, float64 ``(P,)``."""
    y = keys.to(torch.float64)
    if dense if dense is not None else y.numel() <= DENSE_MAX_POSITIVES:
        s = scores.to(torch.float64)
        k = kernel(s[:, None] - s[None, :])  # (P, P): [k, i] = K(s_k - s_i)
        return torch.where(y[:, None] < y[None, :], k, 0.0) @ coefficients.to(torch.float64)
    positions, sorted_keys = _order_by_key(y)
    after = torch.searchsorted(sorted_keys, y, right=True)  # first position with key > y_k
    # K(s_k - s_i) = K~(s_i - s_k) with K~(d) = K(-d): the i are the points, the k the queries.
    sums = ordered_window_sums(
        scores, positions, [coefficients], scores, kernel.mirrored(), suffix_from=after
    )
    return sums["suffix"][0]
