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
Total ``O(P log^2 P)`` time and ``O(P log P)`` memory, all levels of the tree (a merge-sort
tree) evaluated together in one sort and one batch of binary searches. Below ``DENSE_MAX_POSITIVES`` positives the
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
    keys_sorted: Tensor, base: Tensor, edge_ranks: Tensor, scale: int, closed_right: bool
) -> Tensor:
    """``(Q, R + 1)`` positions delimiting each query's regions inside the block whose keys start at ``base``."""
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
    # Every level of the tree at once: key = (level, block, score rank), sorted once.
    level_ids = torch.arange(levels + 1, device=device)
    level_span = ((num_points >> 0) + 1) * scale  # > any block * scale + rank within a level
    blocks = positions[None, :] >> level_ids[:, None]  # (levels + 1, M)
    keys = level_ids[:, None] * level_span + blocks * scale + point_ranks[None, :]
    keys_sorted, order = torch.sort(keys.reshape(-1))
    point_of = order % num_points
    prefix_sums = []
    for terms in moment_terms:
        sums = []
        for term in terms:
            ordered = term[point_of]
            sums.append(torch.cat([ordered.new_zeros(1), ordered.cumsum(0)]))
        prefix_sums.append(sums)
    query_ids = torch.arange(q.numel(), device=device)
    for name, limit in modes:
        limit = limit.to(torch.int64)
        shift = level_ids[:, None]  # (levels + 1, 1)
        inner = level_ids[:, None] < levels
        if name == "suffix":
            node = torch.where(inner, (limit[None, :] + (1 << shift) - 1) >> shift, 0)
            include = torch.where(inner, (node & 1) == 1, limit[None, :] == 0)
        else:
            node = torch.where(inner, (limit[None, :] >> shift) - 1, 0)
            include = torch.where(inner, ((limit[None, :] >> shift) & 1) == 1, limit[None, :] >= (1 << levels))
        level_of, query_of = include.nonzero(as_tuple=True)
        if query_of.numel() == 0:
            continue
        base = level_of * level_span + node[level_of, query_of] * scale
        bounds = _block_bounds(keys_sorted, base, edge_ranks[query_of], scale, kernel.closed_right)
        upper, lower = bounds[:, 1:], bounds[:, :-1]
        for index, sums in enumerate(prefix_sums):
            moments = [p[upper] - p[lower] for p in sums]
            sums_here = combine_region_moments(moments, q_centred[query_of], kernel)
            out[name][index].index_add_(0, query_ids[query_of], sums_here)
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
