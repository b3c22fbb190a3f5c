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
   a uniform grid over the edge range answers most points with one multiply-add and one lookup,
   points in a grid cell that holds an edge are finished by binary search: exact).
3. Forward: per-bucket moments ``sum w (x - r_b)^p`` about the bucket's lower edge ``r_b``
   (small numbers, summed in blocks of a few thousand points and then in float64), suffix sums over the
   buckets, and for each query the region sums are differences of suffix sums at its ``m + 1``
   edges. On region ``r`` the kernel is a polynomial in ``x - q``, so each region's contribution
   is a combination of the moments: no point is visited per query.
4. Backward: ``G`` restricted to one bucket is a polynomial in ``x - r_b`` whose coefficients
   change only at edges; a difference array over buckets (``index_add`` of the changes and a
   ``cumsum``) gives every bucket's coefficients, and each point looks up its own.

Points in the two outer buckets (below or above every window, where every kernel is constant)
never enter the higher moments, so sums agree with a dense float64 evaluation to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import PiecewisePolynomialKernel

__all__ = ["SortedWindows", "BucketedPoints", "working_dtype", "combine_region_moments"]

# Below this many points a plain binary search is as fast as the grid.
_GRID_MIN_POINTS = 32_768
_GRID_CELLS_PER_EDGE = 32
_GRID_MIN_CELLS = 4_096
_GRID_MAX_CELLS = 1 << 21
_GRID_POINTS_PER_EDGE = 8
# Points per block of a moment sum (exact counts in float32; small rounding for the deviations).
_BLOCK = 1 << 12
_MAX_BLOCK_TABLE = 1 << 18


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Score dtype used for comparisons: the input's, but at least float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def combine_region_moments(
    region_moments: Sequence[Tensor], queries: Tensor, kernel: PiecewisePolynomialKernel
) -> Tensor:
    """``sum_r sum_{j in region r} w_j K_r(x_j - q)`` from per-region moments.

    Args:
        region_moments: ``[M0, M1, M2]`` (as many as needed), each ``(Q, R)`` float64 with
            ``Mp[i, r] = sum_{j in region r of query i} w_j (x_j - centre)^p``.
        queries: ``(Q,)`` float64 query scores minus the same centre.
        kernel: coefficients ``c[r, p]`` of ``K`` on region ``r`` as a polynomial in ``x - q``.
    """
    coeff = kernel.coefficient_tensor(torch.float64, queries.device)  # (R, 3)
    m0 = region_moments[0]
    total = m0 @ coeff[:, 0]
    if kernel.degree >= 1:
        m1 = region_moments[1]
        lin = m1 - queries[:, None] * m0  # sum w (x - q)
        total = total + lin @ coeff[:, 1]
        if kernel.degree >= 2:
            m2 = region_moments[2]
            quad = m2 - 2.0 * queries[:, None] * m1 + (queries * queries)[:, None] * m0
            total = total + quad @ coeff[:, 2]
    return total


def _block_sum(buckets: Tensor, source: Tensor | None, size: int, dtype: torch.dtype) -> Tensor:
    """``out[b] = sum_{j: buckets_j = b} source_j`` (``source=None``: counts), float64.

    Summed in blocks of points in ``dtype`` (float32 counts are exact per block), then the block
    tables are added in float64.
    """
    n = buckets.numel()
    out = torch.zeros(size, dtype=torch.float64, device=buckets.device)
    if n == 0:
        return out
    block = max(_BLOCK, -(-n * size // _MAX_BLOCK_TABLE))
    rows = n // block
    full = rows * block
    if source is None:
        source = torch.ones(1, dtype=dtype, device=buckets.device).expand(n)
    if rows:
        table = torch.zeros(rows, size, dtype=dtype, device=buckets.device)
        table.scatter_add_(1, buckets[:full].view(rows, block), source[:full].view(rows, block))
        out += table.sum(0, dtype=torch.float64)
    if full < n:
        tail = torch.zeros(size, dtype=dtype, device=buckets.device)
        tail.scatter_add_(0, buckets[full:], source[full:])
        out += tail.to(torch.float64)
    return out


class BucketedPoints:
    """Points with their buckets against one :class:`SortedWindows`; caches what sums reuse."""

    def __init__(self, windows: SortedWindows, buckets: Tensor, values: Tensor) -> None:
        self.windows = windows
        self.buckets = buckets
        self.values = values.to(windows.edges.dtype)
        self._deviation: Tensor | None = None
        self._moments: dict[int, list[Tensor]] = {}

    @property
    def deviation(self) -> Tensor:
        """``x_j - r_{b_j}``: each point's offset from its bucket's reference value."""
        if self._deviation is None:
            self._deviation = self.values - torch.take(self.windows.references, self.buckets)
        return self._deviation

    def release(self) -> None:
        """Drop cached per-point tensors (keeps the small per-bucket caches)."""
        self._deviation = None


class SortedWindows:
    """The sorted window edges of a set of queries for one breakpoint set.

    Several kernels that share the breakpoints (a kernel and its derivative, or kernels refined to
    a common breakpoint set) are evaluated on one bucketing of the points.

    Args:
        queries: ``(P,)`` query scores (any order), in the working dtype.
        breakpoints: the kernel breakpoints ``a_0 <= ... <= a_m``.
        closed_right: the kernels' convention for a point exactly on an edge.
        right_closed_at: breakpoints closed on the right although ``closed_right`` is false.
    """

    def __init__(
        self,
        queries: Tensor,
        breakpoints: Sequence[float],
        closed_right: bool,
        right_closed_at: frozenset[float] = frozenset(),
    ) -> None:
        if queries.dim() != 1 or queries.numel() == 0:
            raise ValueError("SortedWindows needs a non-empty 1-D tensor of query scores")
        self.queries = queries
        self.closed_right = bool(closed_right)
        self.right_closed_at = frozenset(right_closed_at)
        dtype, device = queries.dtype, queries.device
        offsets = torch.tensor(list(breakpoints), dtype=dtype, device=device)
        self.num_breakpoints = offsets.numel()
        edges = queries[:, None] + offsets[None, :]  # (P, m+1), non-decreasing along dim 1
        if self.right_closed_at:
            # "x > e - 1 ulp" is "x >= e" for scores of this dtype: closes these edges on the right.
            nudge = torch.tensor([b in self.right_closed_at for b in breakpoints], device=device)
            edges = torch.where(nudge[None, :], torch.nextafter(edges, edges.new_tensor(-float("inf"))), edges)
        self.edges, _ = torch.sort(edges.reshape(-1))
        self.num_edges = self.edges.numel()
        # A point "is at or above" edge e (per convention) iff its bucket >= threshold(e).
        if self.closed_right:
            self.thresholds = torch.searchsorted(self.edges, edges, right=True)
        else:
            self.thresholds = torch.searchsorted(self.edges, edges, right=False) + 1
        # Reference value of every bucket (its lower edge; the outer/dump buckets reuse an end).
        last = self.edges[-1:]
        self.references = torch.cat([self.edges[:1], self.edges, last]).contiguous()  # (L + 2,)
        # Centre of the moments: inside the edge range, so |x - centre| is small where it matters.
        self.centre = self.edges[self.num_edges // 2].to(torch.float64)
        self._offsets64 = self.references.to(torch.float64) - self.centre
        self._grid: tuple[float, float, Tensor, int] | None | bool = False

    @classmethod
    def for_kernel(cls, queries: Tensor, kernel: PiecewisePolynomialKernel) -> SortedWindows:
        """Windows with the breakpoints and closure conventions of ``kernel``."""
        return cls(queries, kernel.breakpoints, kernel.closed_right, kernel.right_closed_at)

    # ------------------------------------------------------------------ bucketing
    @property
    def dump_bucket(self) -> int:
        """Bucket index for points to be left out of every sum (their adjoint is 0)."""
        return self.num_edges + 1

    @property
    def num_buckets(self) -> int:
        return self.num_edges + 2

    def bucketize(self, points: Tensor) -> Tensor:
        """Number of edges below each point (``<`` or ``<=`` per convention), int64 in ``[0, L]``."""
        points = points.to(self.edges.dtype)
        # The grid pays off with many points per edge; its tables cost O(cells).
        many = points.numel() >= max(_GRID_MIN_POINTS, _GRID_POINTS_PER_EDGE * self.num_edges)
        grid = self._grid_tables(points.numel()) if many else None
        if grid is None:
            return torch.searchsorted(self.edges, points, right=self.closed_right)
        scale, shift, base, num_cells = grid
        buckets = torch.take(base, self._cells(points, scale, shift, num_cells))
        # Cells holding an edge: finish with a binary search (exact).
        dirty = (buckets < 0).nonzero().squeeze(1)
        if dirty.numel():
            buckets[dirty] = torch.searchsorted(self.edges, points[dirty], right=self.closed_right)
        return buckets

    @staticmethod
    def _cells(values: Tensor, scale: float, shift: float, num_cells: int) -> Tensor:
        # A monotone function of the value, computed by separate correctly-rounded operations
        # (multiply, add, clamp, truncate), so edges and points get identical results for
        # identical values whatever the code path: an edge in a lower cell is below the point,
        # an edge in a higher cell above it.
        return values.mul(scale).add_(shift).clamp_(0.0, float(num_cells - 1)).long()

    def _grid_tables(self, num_points: int) -> tuple[float, float, Tensor, int] | None:
        if self._grid is not False:
            return self._grid  # type: ignore[return-value]
        lo = float(self.edges[0])
        hi = float(self.edges[-1])
        inner = int(min(max(_GRID_CELLS_PER_EDGE * self.num_edges, _GRID_MIN_CELLS), _GRID_MAX_CELLS,
                        max(_GRID_MIN_CELLS, num_points // 4)))
        span = hi - lo
        scale = inner / span if span > 0.0 else 1.0
        margin = 1  # cell 0: below lo; then the edge range; the last cells: above hi
        num_cells = inner + 2 * margin + 1
        shift = margin - lo * scale
        if not (abs(scale) < float("inf") and abs(shift) < float("inf")):
            self._grid = None
            return None
        edge_cells = self._cells(self.edges, scale, shift, num_cells)
        counts = torch.bincount(edge_cells, minlength=num_cells)
        base = torch.cumsum(counts, 0) - counts  # edges in lower cells
        base = base.masked_fill(counts > 0, -1)
        self._grid = (scale, shift, base.contiguous(), num_cells)
        return self._grid

    def points(self, buckets: Tensor, values: Tensor) -> BucketedPoints:
        """Pair bucketed points with their values for :meth:`query_sums` / :meth:`point_sums`."""
        return BucketedPoints(self, buckets, values)

    # ------------------------------------------------------------------ forward sums
    def _check(self, kernel: PiecewisePolynomialKernel) -> None:
        if (
            len(kernel.breakpoints) != self.num_breakpoints
            or kernel.closed_right != self.closed_right
            or kernel.right_closed_at != self.right_closed_at
        ):
            raise ValueError("kernel does not match the breakpoints/convention of these windows")

    def query_sums(
        self,
        points: BucketedPoints,
        kernels: Sequence[PiecewisePolynomialKernel],
        weights: Tensor | None = None,
    ) -> list[Tensor]:
        """``F_i = sum_j w_j K(x_j - q_i)`` for each kernel, float64 ``(P,)`` tensors.

        Points in :attr:`dump_bucket` are left out. ``weights`` default to 1 (then the bucket
        moments are cached on ``points`` for later calls).
        """
        for kernel in kernels:
            self._check(kernel)
        degree = max(k.degree for k in kernels)
        suffixes = self._suffix_moments(points, weights, degree)
        bounds = self._region_bounds()
        region_moments = []
        for s in suffixes:
            at = s[bounds]  # (P, R + 1)
            region_moments.append(at[:, :-1] - at[:, 1:])  # (P, R) sums per region
        q = self.queries.to(torch.float64) - self.centre
        return [combine_region_moments(region_moments, q, k) for k in kernels]

    def _suffix_moments(self, points: BucketedPoints, weights: Tensor | None, degree: int) -> list[Tensor]:
        """Suffix sums over buckets of ``w (x - centre)^p``, ``p = 0..degree`` (length L + 2)."""
        if weights is None:
            cached = points._moments.get(degree)
            if cached is None:
                for have, value in points._moments.items():
                    if have >= degree:
                        return value[: degree + 1]
                cached = self._compute_suffix_moments(points, None, degree)
                points._moments[degree] = cached
            return cached
        return self._compute_suffix_moments(points, weights, degree)

    def _compute_suffix_moments(self, points: BucketedPoints, weights: Tensor | None, degree: int) -> list[Tensor]:
        size = self.num_buckets
        dtype = points.values.dtype
        w = None if weights is None else weights.to(dtype)
        raw = [_block_sum(points.buckets, w, size, dtype)]  # sum w
        if degree >= 1:
            dev = points.deviation
            term = dev if w is None else dev * w
            raw.append(_block_sum(points.buckets, term, size, dtype))  # sum w (x - r)
            if degree >= 2:
                raw.append(_block_sum(points.buckets, term * dev, size, dtype))  # sum w (x - r)^2
        r = self._offsets64  # r_b - centre
        centred = [raw[0]]
        if degree >= 1:
            centred.append(raw[1] + r * raw[0])
        if degree >= 2:
            centred.append(raw[2] + 2.0 * r * raw[1] + r * r * raw[0])
        suffixes = []
        for power, per_bucket in enumerate(centred):
            per_bucket = per_bucket.clone()
            if power >= 1:
                # Outer buckets only meet constant kernel pieces: keep their (possibly huge)
                # powers out of the suffix sums so that differences stay accurate.
                per_bucket[0] = 0.0
                per_bucket[self.num_edges] = 0.0
            per_bucket[-1] = 0.0  # the dump bucket
            suffixes.append(per_bucket.flip(0).cumsum(0).flip(0))
        return suffixes

    def _region_bounds(self) -> Tensor:
        """``(P, m + 3)`` bucket thresholds with 0 and L + 1 around each query's edges."""
        p = self.thresholds.shape[0]
        first = self.thresholds.new_zeros(p, 1)
        last = self.thresholds.new_full((p, 1), self.num_edges + 1)
        return torch.cat([first, self.thresholds, last], dim=1)

    # ------------------------------------------------------------------ adjoint sums
    def point_sums(self, points: BucketedPoints, kernel: PiecewisePolynomialKernel, coefficients: Tensor) -> Tensor:
        """``G_j = sum_i c_i K(x_j - q_i)`` for every point (0 in the dump bucket), working dtype."""
        self._check(kernel)
        tables = self.bucket_polynomials(kernel, coefficients).to(points.values.dtype)
        if kernel.degree == 0:
            return torch.take(tables[:, 0].contiguous(), points.buckets)
        dev = points.deviation
        slope = torch.take(tables[:, 1].contiguous(), points.buckets)
        if kernel.degree == 2:
            slope.addcmul_(torch.take(tables[:, 2].contiguous(), points.buckets), dev)
        return slope.mul_(dev).add_(torch.take(tables[:, 0].contiguous(), points.buckets))

    def bucket_polynomials(self, kernel: PiecewisePolynomialKernel, coefficients: Tensor) -> Tensor:
        """``(L + 2, 3)`` float64: per bucket, ``G`` as a polynomial in ``x - r_b``."""
        c = coefficients.to(torch.float64)
        k = kernel.coefficient_tensor(torch.float64, c.device)  # (R, 3), R = m + 2
        q = self.queries.to(torch.float64) - self.centre
        # Query i on region r contributes c_i * sum_p k[r, p] (x - q_i)^p; in powers of x - centre:
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
        size = self.num_buckets
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
        # Re-expand around each bucket's reference: x - centre = (x - r_b) + (r_b - centre).
        r = self._offsets64
        a0, a1, a2 = table.unbind(1)
        return torch.stack([a0 + a1 * r + a2 * r * r, a1 + 2.0 * a2 * r, a2], dim=1)
