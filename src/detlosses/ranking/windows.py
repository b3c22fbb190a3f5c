"""Exact kernel sums between a few queries and many points, without a loop over the queries.

The ranking losses need, for every positive ``i`` (a *query* with score ``q_i``) sums over many
other scores ``x_j`` (*points*: the negatives, or the positives themselves) such as

    ``F_i = sum_j w_j K(x_j - q_i)``                     (forward: one value per query)

and, for the gradient, the adjoint

    ``G_j = sum_i c_i K(x_j - q_i)``                     (backward: one value per point)

for a piecewise-polynomial kernel ``K`` (:mod:`detlosses.ranking.kernels`). Written as released,
both are ``O(P N)`` with a Python loop over the ``P`` positives. Here both are computed exactly in
``O((N + P) log P)`` time and ``O(N)`` memory (Chen et al., CVPR 2019, Sec. 3.3 observe that only
points inside the windows matter; this module removes the loop altogether):

1. The ``P (m + 1)`` *edges* ``q_i + a_r`` (``a_r`` the kernel's breakpoints) are sorted.
2. Every point gets its *bucket*: the number of edges below it (:meth:`SortedWindows.bucketize`;
   a uniform grid over the edge range answers most points with one multiply and one lookup, the
   few points that share a grid cell with an edge are finished by binary search: exact).
3. Forward: per-bucket moments ``sum w x^p`` (``bincount``), suffix sums over buckets, and for
   each query the region sums are differences of suffix sums at its ``m + 1`` edges. On region
   ``r`` the kernel is a polynomial in ``x - q``, so the region's contribution is a combination
   of the moments: no point is visited per query.
4. Backward: ``G`` restricted to one bucket is a polynomial in ``x`` whose coefficients change
   only at edges; a difference array over buckets (``index_add`` of the changes + ``cumsum``)
   gives every bucket's coefficients, and each point gathers its own.

Moments are accumulated in float64 around a centre inside the edge range, and the points in the
two outer buckets (below or above every window, where every kernel is constant) never enter the
higher moments, so the result agrees with a dense float64 evaluation to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import PiecewisePolynomialKernel

__all__ = ["SortedWindows", "working_dtype"]

# Below this many points a plain binary search is as fast as the grid.
_GRID_MIN_POINTS = 32_768
_GRID_CELLS_PER_EDGE = 64
_GRID_MIN_CELLS = 4_096
_GRID_MAX_CELLS = 1 << 21


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Score dtype used for comparisons: the input's, but at least float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class SortedWindows:
    """The sorted window edges of a set of queries for one breakpoint set.

    Several kernels that share the breakpoints (a kernel and its derivative, or kernels refined to
    a common breakpoint set) can be evaluated on one bucketing of the points.

    Args:
        queries: ``(P,)`` query scores (any order), in the working dtype.
        breakpoints: the kernel breakpoints ``a_0 <= ... <= a_m``.
        closed_right: the kernels' convention for a point exactly on an edge.
    """

    def __init__(self, queries: Tensor, breakpoints: Sequence[float], closed_right: bool) -> None:
        if queries.dim() != 1 or queries.numel() == 0:
            raise ValueError("SortedWindows needs a non-empty 1-D tensor of query scores")
        self.queries = queries
        self.closed_right = bool(closed_right)
        dtype, device = queries.dtype, queries.device
        offsets = torch.tensor(list(breakpoints), dtype=dtype, device=device)
        self.num_breakpoints = offsets.numel()
        edges = queries[:, None] + offsets[None, :]  # (P, m+1), non-decreasing along dim 1
        self.edges, _ = torch.sort(edges.reshape(-1))
        self.num_edges = self.edges.numel()
        # A point "is at or above" edge e (per convention) iff its bucket >= threshold(e).
        if self.closed_right:
            self.thresholds = torch.searchsorted(self.edges, edges, right=True)
        else:
            self.thresholds = torch.searchsorted(self.edges, edges, right=False) + 1
        # Centre of the moments: inside the edge range, so |x - centre| is small where it matters.
        self.centre = self.edges[self.num_edges // 2].to(torch.float64)
        self._grid: tuple[float, float, Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ bucketing
    @property
    def dump_bucket(self) -> int:
        """Bucket index for points to be left out of every sum (their adjoint is 0)."""
        return self.num_edges + 1

    def bucketize(self, points: Tensor) -> Tensor:
        """Number of edges below each point (``<`` or ``<=`` per convention), int64 in ``[0, L]``."""
        points = points.to(self.edges.dtype)
        if points.numel() < _GRID_MIN_POINTS:
            return torch.searchsorted(self.edges, points, right=self.closed_right)
        grid = self._grid_tables()
        if grid is None:
            return torch.searchsorted(self.edges, points, right=self.closed_right)
        lo, inv_width, base, occupied = grid
        cells = self._cells(points, lo, inv_width, base.numel() - 3)
        buckets = torch.gather(base, 0, cells)
        # Points sharing a cell with an edge: finish with a binary search (exact).
        dirty = torch.gather(occupied, 0, cells).nonzero().squeeze(1)
        if dirty.numel():
            buckets[dirty] = torch.searchsorted(self.edges, points[dirty], right=self.closed_right)
        return buckets

    def _cells(self, values: Tensor, lo: float, inv_width: float, num_cells: int) -> Tensor:
        # Monotone in `values` (rounding is monotone), so an edge in a lower cell is below the
        # point and an edge in a higher cell above it. Cell 0 is "below lo", num_cells + 2 "above".
        raw = torch.floor((values - lo) * inv_width)
        return raw.clamp_(-1.0, float(num_cells + 1)).add_(1.0).long()

    def _grid_tables(self) -> tuple[float, float, Tensor, Tensor] | None:
        if self._grid is not None:
            return self._grid
        lo = float(self.edges[0])
        hi = float(self.edges[-1])
        num_cells = int(min(max(_GRID_CELLS_PER_EDGE * self.num_edges, _GRID_MIN_CELLS), _GRID_MAX_CELLS))
        span = hi - lo
        inv_width = num_cells / span if span > 0.0 else 1.0
        if not (inv_width < float("inf")):
            return None
        edge_cells = self._cells(self.edges, lo, inv_width, num_cells)
        counts = torch.bincount(edge_cells, minlength=num_cells + 3)
        base = torch.cumsum(counts, 0) - counts  # edges in lower cells
        self._grid = (lo, inv_width, base, counts > 0)
        return self._grid

    # ------------------------------------------------------------------ forward sums
    def sums_at_queries(
        self,
        buckets: Tensor,
        points: Tensor,
        kernels: Sequence[PiecewisePolynomialKernel],
        weights: Tensor | None = None,
    ) -> list[Tensor]:
        """``F_i = sum_j w_j K(x_j - q_i)`` for each kernel, float64 ``(P,)`` tensors.

        Args:
            buckets: from :meth:`bucketize`; points in :attr:`dump_bucket` are left out.
            points: the point scores ``x_j``.
            kernels: kernels with this object's breakpoints and convention.
            weights: optional per-point weights ``w_j`` (default 1).
        """
        degree = max(k.degree for k in kernels)
        moments = self._bucket_moments(buckets, points, weights, degree)
        return [self._query_sums(moments, k) for k in kernels]

    def _bucket_moments(
        self, buckets: Tensor, points: Tensor, weights: Tensor | None, degree: int
    ) -> list[Tensor]:
        """Suffix sums over buckets of ``w (x - centre)^p``, ``p = 0..degree`` (length L + 2)."""
        size = self.num_edges + 2
        w = None if weights is None else weights.to(torch.float64)
        suffixes = []
        centred = None
        for power in range(degree + 1):
            if power == 0:
                per_bucket = torch.bincount(buckets, weights=w, minlength=size).to(torch.float64)
            else:
                if centred is None:
                    centred = points.to(torch.float64) - self.centre
                term = centred if power == 1 else centred * centred
                if w is not None:
                    term = term * w
                per_bucket = torch.bincount(buckets, weights=term, minlength=size)
                # Outer buckets only meet constant kernel pieces: keep their (possibly huge)
                # powers out of the suffix sums so differences stay accurate.
                per_bucket[0] = 0.0
                per_bucket[self.num_edges] = 0.0
            per_bucket = per_bucket[:size].clone()
            per_bucket[-1] = 0.0  # the dump bucket
            suffixes.append(per_bucket.flip(0).cumsum(0).flip(0))
        return suffixes

    def _region_bounds(self) -> Tensor:
        """``(P, m + 3)`` bucket thresholds with 0 and L + 1 around each query's edges."""
        p = self.thresholds.shape[0]
        first = self.thresholds.new_zeros(p, 1)
        last = self.thresholds.new_full((p, 1), self.num_edges + 1)
        return torch.cat([first, self.thresholds, last], dim=1)

    def _query_sums(self, suffixes: Sequence[Tensor], kernel: PiecewisePolynomialKernel) -> Tensor:
        if len(kernel.breakpoints) != self.num_breakpoints or kernel.closed_right != self.closed_right:
            raise ValueError("kernel does not match the breakpoints/convention of these windows")
        bounds = self._region_bounds()
        coeff = kernel.coefficient_tensor(torch.float64, bounds.device)  # (R, 3)
        q = self.queries.to(torch.float64) - self.centre  # (P,)
        region = []
        for s in suffixes:
            at = s[bounds]  # (P, R + 1)
            region.append(at[:, :-1] - at[:, 1:])  # (P, R) sums per region
        m0 = region[0]
        total = m0 @ coeff[:, 0]
        if len(region) > 1 and kernel.degree >= 1:
            m1 = region[1]
            lin = m1 - q[:, None] * m0  # sum w (x - q)
            total = total + lin @ coeff[:, 1]
            if len(region) > 2 and kernel.degree >= 2:
                m2 = region[2]
                quad = m2 - 2.0 * q[:, None] * m1 + (q * q)[:, None] * m0
                total = total + quad @ coeff[:, 2]
        return total

    # ------------------------------------------------------------------ adjoint sums
    def sums_at_points(
        self, buckets: Tensor, points: Tensor, kernel: PiecewisePolynomialKernel, coefficients: Tensor
    ) -> Tensor:
        """``G_j = sum_i c_i K(x_j - q_i)`` for every point (0 for points in the dump bucket).

        Returned in the points' working dtype (float64 if the points are float64).
        """
        if len(kernel.breakpoints) != self.num_breakpoints or kernel.closed_right != self.closed_right:
            raise ValueError("kernel does not match the breakpoints/convention of these windows")
        tables = self.bucket_polynomials(kernel, coefficients)
        out_dtype = working_dtype(points.dtype)
        x = points.to(out_dtype)
        if kernel.degree == 0:
            return torch.gather(tables[:, 0].to(out_dtype), 0, buckets)
        centred = x - self.centre.to(out_dtype)
        result = torch.gather(tables[:, 1].to(out_dtype), 0, buckets)
        if kernel.degree == 2:
            result.addcmul_(torch.gather(tables[:, 2].to(out_dtype), 0, buckets), centred)
        result.mul_(centred)
        result.add_(torch.gather(tables[:, 0].to(out_dtype), 0, buckets))
        return result

    def bucket_polynomials(self, kernel: PiecewisePolynomialKernel, coefficients: Tensor) -> Tensor:
        """``(L + 2, 3)`` float64: per bucket, ``G`` as a polynomial in ``x - centre``."""
        c = coefficients.to(torch.float64)
        k = kernel.coefficient_tensor(torch.float64, c.device)  # (R, 3), R = m + 2
        q = self.queries.to(torch.float64) - self.centre
        # Query i on region r contributes c_i * sum_p k[r, p] (x - q_i)^p; expand in powers of x.
        ones = torch.ones_like(q)
        per_power = torch.stack(
            [
                k[:, 0][None, :] * ones[:, None]
                - k[:, 1][None, :] * q[:, None]
                + k[:, 2][None, :] * (q * q)[:, None],
                k[:, 1][None, :] - 2.0 * k[:, 2][None, :] * q[:, None],
                k[:, 2][None, :] * ones[:, None],
            ],
            dim=-1,
        ) * c[:, None, None]  # (P, R, 3)
        size = self.num_edges + 2
        table = per_power[:, 0, :].sum(0, keepdim=True).expand(size, 3).clone()
        changes = (per_power[:, 1:, :] - per_power[:, :-1, :]).reshape(-1, 3)
        delta = torch.zeros(size, 3, dtype=torch.float64, device=c.device)
        delta.index_add_(0, self.thresholds.reshape(-1), changes)
        table += delta.cumsum(0)
        # The outer buckets see a constant kernel piece of every query: set them exactly.
        table[0] = per_power[:, 0, :].sum(0)
        table[self.num_edges] = per_power[:, -1, :].sum(0)
        table[self.num_edges, 1:] = 0.0
        table[0, 1:] = 0.0
        table[-1] = 0.0  # dump bucket
        return table
