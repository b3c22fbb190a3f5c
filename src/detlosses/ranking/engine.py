"""Exact kernel sums between a few queries and many points, in a fixed, small number of operators.

The ranking losses need, for every positive ``i`` (a *query* with score ``q_i``), sums over many
other scores ``x_j`` (*points*: the negatives, or the positives themselves)

    ``F_i = sum_j w_j K(x_j - q_i)``                     (one value per query)

and, for the gradient, the adjoint

    ``G_j = sum_i c_i K(x_j - q_i)``                     (one value per point)

for piecewise-polynomial kernels ``K`` (:mod:`detlosses.ranking.kernels`). Written as released,
both are ``O(P N)`` with a Python loop over the ``P`` positives. Here both are exact in
``O((N + P) log P)`` time, ``O(N)`` memory and a number of tensor operators that does not depend on
``N`` or ``P`` (Chen et al., CVPR 2019, Sec. 3.3 observe that only points inside the windows matter;
this module removes the loop altogether).

**Hinge form.** A kernel that is constant (``base``) below its first breakpoint is a sum of
one-sided polynomials, one per breakpoint ``a_r``:

    ``K(d) = base + sum_r [d above a_r] (alpha_r0 + alpha_r1 (d - a_r) + alpha_r2 (d - a_r)^2)``

(:class:`HingeKernels`). With the *edges* ``e_ir = q_i + a_r`` this gives

    ``F_i = base W + sum_r sum_p alpha_rp sum_{x_j above e_ir} w_j (x_j - e_ir)^p``,

so the forward sums need only the moments ``S_k(e) = sum_{x_j above e} w_j x_j^k`` at the ``P m``
edges: the points are *bucketed* once among the sorted edges (one binary search, or on the CPU a
uniform grid finished by binary search), the moments of every bucket are accumulated by one
``index_add`` (on the CPU a ``scatter_add_``), and a cumulative sum over the buckets answers every
edge. The adjoint is the same algebra the other way round: the per-edge polynomials, cumulated in
sorted edge order, give each bucket's polynomial in ``x``, and every point evaluates its own.

Moments are summed in float64 over the points above an edge only (suffix sums), so points below
every window and points left out never enter a difference, and the sums agree with a dense float64
evaluation to rounding.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise

import torch
from torch import Tensor

from .kernels import PiecewisePolynomialKernel

__all__ = ["AdjointTable", "HingeKernels", "Windows", "working_dtype", "set_cpu_fast_paths"]

# On the CPU, from this many points on, a uniform grid buckets faster than a binary search per point
# (a binary search per point is memory-latency bound there: ~30 ms for 1e6 points and 2000 edges);
# CUDA always uses the binary search (fast there, and free of host synchronisations).
_GRID_MIN_POINTS = 32_768
_CPU_FAST_PATHS = True


def set_cpu_fast_paths(enabled: bool) -> None:
    """Use the CPU's own speed-ups (default) or not.

    On the CPU a binary search per point is memory-latency bound, so for large batches the engine
    buckets with a uniform grid of int32 cells (about 20 more small operators and a compaction of
    the points that fall in a cell holding an edge — no host synchronisation on the CPU), finds the
    positives and their count with one ``nonzero``, counts by ``bincount``, accumulates and looks up
    with int64 bucket indices (``scatter_add_`` and ``gather``: 2x and 1.5x faster than ``index_add_``
    and ``index_select`` here), and evaluates the adjoint in float32 about each bucket's lower edge
    (half the memory traffic; CUDA: float64);
    from 2^20 points on, the per-point work runs chunk by chunk (2^16 points) in the CPU's cache.
    Rank & Sort's pairs of positives go in blocks of 2^22 pairs on the CPU (2^24 otherwise: fewer
    operators, larger temporaries). All are exact. With them off, a CPU call runs exactly the
    operators a CUDA call runs (what ``benchmarks.launches`` counts as the device path).
    """
    global _CPU_FAST_PATHS
    _CPU_FAST_PATHS = bool(enabled)


def cpu_fast_paths_enabled() -> bool:
    """Whether the CPU's own speed-ups are on (:func:`set_cpu_fast_paths`)."""
    return _CPU_FAST_PATHS


# On the CPU's fast path, from this many points on, the per-point work (bucketing, moment sums,
# adjoint) runs over chunks of _CPU_CHUNK points, so that its temporaries stay in the CPU's cache and
# are reused instead of being written to memory and faulted in afresh (this CPU, N = 16e6: the
# adjoint's look-ups 247 -> 162 ms; the points' float64 copy is never made in full).
_CPU_CHUNK_MIN_POINTS = 1 << 20
_CPU_CHUNK = 1 << 16


def _cpu_chunks(points: Tensor) -> list[slice] | None:
    """The chunks of ``points`` the CPU's fast path works through one by one (``None``: all at once)."""
    n = points.shape[0]
    if not _CPU_FAST_PATHS or points.device.type != "cpu" or n < _CPU_CHUNK_MIN_POINTS:
        return None
    return [slice(start, min(start + _CPU_CHUNK, n)) for start in range(0, n, _CPU_CHUNK)]


_GRID_CELLS_PER_EDGE = 32
_GRID_MIN_CELLS = 4_096
_GRID_MAX_CELLS = 1 << 21
# Off the CPU's fast path, from this many points on, the per-bucket moments are accumulated in
# `lanes` interleaved copies of the table (point j into copy j mod lanes), then summed: atomic adds
# of many points into one bucket (all points below every window late in training, or a dense
# score region early on) are spread over that many addresses instead of serialising on one.
# Measured on an H100 (AP-Loss, N = 1e8, P = 4000, 64 copies): 22 -> 13 ms early in training,
# 328 -> 38 ms with every negative in one bucket; at N = 1e6 one table's index_add_ was half of the
# device time (0.31 of 0.64 ms). Lanes are a power of two that divides the number of points, at most
# _LANES, and the copies stay within _LANES_TABLE_ELEMENTS float64 values (16 MiB: resident in an
# H100's 50 MB L2), so fewer positives get more copies.
_LANES_MIN_POINTS = 1 << 17
_LANES = 1024
_LANES_TABLE_ELEMENTS = 1 << 21


# Off the CPU's fast path, for point sets of this many points or more, the windows may get
# _SPREAD_EDGES zero-weight edges spread evenly from the lowest point up to the lowest window edge.
# They change no sum (a point is above a real edge or not, whatever lies between), but they split
# the bucket of the points below every window, which late in training holds nearly every negative:
# their atomic adds go to up to _SPREAD_EDGES buckets (times the lanes) instead of one; the points
# left out (ignored, or the positives among the negatives) cycle through them too. On an H100
# (AP-Loss, N = 1e8, P = 4000, 64 lanes) that crowd cost 38 ms against 13 ms early in training.
# Off (0) until a GPU has measured it (`benchmarks.kernel_profile --late --spread 1024`). It costs 8
# host operators per call, so it starts at 2^20 points: there a call replays a CUDA graph (up to
# 2^26) or is bound by the device, and the operator budgets (measured up to N = 1e6) hold.
_SPREAD_MIN_POINTS = 1 << 20
_SPREAD_EDGES = 0


def interleaved_lanes(count: int, most: int) -> int:
    """How many interleaved copies spread ``count`` items (item ``j`` into copy ``j mod lanes``): the
    largest power of two up to ``most`` (a power of two) that divides ``count``, or 1 below 8 (a
    view of the items as ``(count / lanes, lanes)`` then needs no padding)."""
    lanes = math.gcd(count, most)
    return lanes if lanes >= 8 else 1


def _accumulation_lanes(points: int, table_elements: int) -> int:
    """Interleaved copies of a ``table_elements`` table for ``points`` points (1: the table alone)."""
    lanes = interleaved_lanes(points, _LANES) if points >= _LANES_MIN_POINTS else 1
    while lanes > 1 and lanes * table_elements > _LANES_TABLE_ELEMENTS:
        lanes //= 2
    return lanes if lanes >= 8 else 1


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Score dtype used for comparisons: the input's, but at least float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class HingeKernels:
    """One or more kernels on a common set of breakpoints, in hinge form.

    Attributes:
        breakpoints: ``a_0 <= ... <= a_{m-1}``; a value may repeat with a different closure.
        closed: per breakpoint, whether ``d == a_r`` counts as above it.
        base: per kernel, its constant value below every breakpoint.
        alpha: ``alpha[r][p][k]``: coefficient of ``(d - a_r)^p`` switched on above ``a_r`` for
            kernel ``k``.
    """

    breakpoints: tuple[float, ...]
    closed: tuple[bool, ...]
    base: tuple[float, ...]
    alpha: tuple[tuple[tuple[float, ...], ...], ...]

    @property
    def num_kernels(self) -> int:
        return len(self.base)

    @property
    def degree(self) -> int:
        """Highest power of ``d - a_r`` used, at least 1 (the sums carry a first moment anyway)."""
        deg = 1
        for row in self.alpha:
            for power in (1, 2):
                if any(v != 0.0 for v in row[power]):
                    deg = max(deg, power)
        return deg

    @staticmethod
    @cache
    def of(*kernels: PiecewisePolynomialKernel) -> HingeKernels:
        """The hinge form of ``kernels`` on the union of their breakpoints (cached)."""
        edges = sorted({(b, k.closed_right or b in k.right_closed_at) for k in kernels for b in k.breakpoints})
        alpha = [[[0.0] * len(kernels) for _ in range(3)] for _ in edges]
        for index, kernel in enumerate(kernels):
            for r, b in enumerate(kernel.breakpoints):
                closed = kernel.closed_right or b in kernel.right_closed_at
                row = edges.index((b, closed))
                c_lo, c_hi = kernel.coefficients[r], kernel.coefficients[r + 1]
                d0, d1, d2 = (hi - lo for lo, hi in zip(c_lo, c_hi, strict=True))
                # d0 + d1 d + d2 d^2 re-expanded in powers of (d - b)
                coefficients = (d0 + d1 * b + d2 * b * b, d1 + 2.0 * d2 * b, d2)
                for power in range(3):
                    alpha[row][power][index] += coefficients[power]
        return HingeKernels(
            breakpoints=tuple(b for b, _ in edges),
            closed=tuple(c for _, c in edges),
            base=tuple(k.coefficients[0][0] for k in kernels),
            alpha=tuple(tuple(tuple(p) for p in row) for row in alpha),
        )

    def tensors(self, dtype: torch.dtype, device: torch.device) -> _KernelTensors:
        return _kernel_tensors(self, dtype, device)

    def score_limit(self, dtype: torch.dtype) -> float:
        """The largest ``|score|`` of ``dtype`` logits the sums are meant for (exclusive): ``2^30``
        times the breakpoints' finest spacing, where the float64 moments start to cancel, or
        ``2^23`` times it for float32 (and narrower) scores whose edges ``q + a_r`` are kept as
        float32 numbers (:attr:`float32_edges_exact`), where one ulp reaches the spacing. Measured
        on 2,000-50,000 random logits, AP-Loss and Rank & Sort (spacings 2 and 1): float32 exact to
        1e-7 up to 6e6 and 1e-4 to 2e-1 off at 1e7; float64 1e-5 off at 1e10 in a dense cluster of
        3,000 (the cancellation grows with the scores and the batch), 1e-2 at 1e15, and a loss of 0
        from 1e17. Parameterized AP (float32 edges rounded down, spacing 0.002-0.01): exact to 1e-7
        up to 1e6."""
        if working_dtype(dtype) == torch.float32 and self.float32_edges_exact:
            return self.finest_spacing * 2.0**23
        return self.finest_spacing * 2.0**30

    @functools.cached_property
    def float32_edges_exact(self) -> bool:
        """Whether ``q + a_r`` is a float32 number for every float32 score ``|q| < 2^23 x`` the
        finest spacing: every breakpoint is a multiple of the float32 spacing just below that
        (AP-Loss's and Rank & Sort's ``+-delta`` for a binary fraction ``delta``: yes; other deltas
        and Parameterized AP's searched breakpoints: no, their edges are rounded down to the float32
        threshold that sorts float32 points exactly, :meth:`Windows._float32_thresholds`)."""
        grain = 2.0 ** (math.ceil(math.log2(self.finest_spacing * 2.0**23)) - 24)
        return all(math.fmod(b, grain) == 0.0 for b in self.breakpoints)

    @functools.cached_property
    def finest_spacing(self) -> float:
        """The smallest distance between two distinct breakpoints (1 for a single one)."""
        return min((b - a for a, b in pairwise(sorted(set(self.breakpoints)))), default=1.0)


@dataclass(frozen=True)
class _KernelTensors:
    offsets: Tensor  # (m, 1) breakpoints in the score dtype
    closed: Tensor | None  # (m, 1) bool, None when no breakpoint is closed
    all_closed: bool
    # per power q of the negated edge -e = -(q_i + a_r): E_q[k, j, r, 0] (K = 1: E_q[j, r, 0]), the
    # coefficient of x^j in kernel k's polynomial above edge r is beta_j = sum_q (-e)^q E_q[.., j, r]
    power_coefficients: tuple[Tensor, ...]
    base: Tensor  # (K,) float64
    minus_infinity: Tensor  # () in the score dtype, for nextafter
    negated_offsets64: Tensor  # (m, 1) float64


@cache
def _kernel_tensors(kernels: HingeKernels, dtype: torch.dtype, device: torch.device) -> _KernelTensors:
    degree = kernels.degree
    m, k = len(kernels.breakpoints), kernels.num_kernels
    expansion = torch.zeros(degree + 1, k, degree + 1, m, 1, dtype=torch.float64)  # [q, k, j, r]
    for r, row in enumerate(kernels.alpha):
        for power in range(degree + 1):
            for j in range(power + 1):
                # alpha_p (x - e)^p = sum_j C(p, j) x^j (-e)^(p - j)
                expansion[power - j, :, j, r, 0] += math.comb(power, j) * torch.tensor(row[power], dtype=torch.float64)
    if k == 1:
        expansion = expansion.squeeze(1)
    closed = torch.tensor(kernels.closed, dtype=torch.bool)[:, None]
    return _KernelTensors(
        offsets=torch.tensor(kernels.breakpoints, dtype=dtype, device=device)[:, None],
        closed=closed.to(device) if bool(closed.any()) and not bool(closed.all()) else None,
        all_closed=bool(closed.all()),
        power_coefficients=tuple(e.to(device) for e in expansion.unbind(0)),
        base=torch.tensor(kernels.base, dtype=torch.float64, device=device),
        minus_infinity=torch.tensor(-math.inf, dtype=dtype, device=device),
        negated_offsets64=-torch.tensor(kernels.breakpoints, dtype=torch.float64, device=device)[:, None],
    )


@cache
def _spread_fractions(count: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(count,)``: ``k / count`` for ``k = 0, 1, ..., count - 1`` (made once per dtype and device)."""
    return torch.arange(count, dtype=torch.float64).div_(count).to(dtype=dtype, device=device)


@cache
def _spread_buckets(lanes: int, device: torch.device) -> Tensor:
    """``(lanes,)`` int64: ``0, 1, ..., lanes - 1``, the buckets the points left out cycle through."""
    return torch.arange(lanes, device=device)


@dataclass
class PointSet:
    """Points bucketed among the edges of one :class:`Windows`."""

    buckets: Tensor  # (M,) int64 (int32 from the CPU grid): edges strictly below each point (0: left out)
    scores: Tensor  # (M,) the points in the working dtype
    keep: Tensor | None = None  # (M,) bool: the points that take part (None: all, or see left_out)
    left_out: Tensor | None = None  # (K,) int64: the positions of the points that do not (instead of keep)

    @functools.cached_property
    def index(self) -> Tensor:
        """:attr:`buckets` as int64 (the CPU's scatter and gather kernels are faster with it)."""
        return self.buckets if self.buckets.dtype == torch.int64 else self.buckets.long()

    @functools.cached_property
    def values(self) -> Tensor:
        """``(M,)`` float64: the points (made when first asked for; the CPU's chunks never ask)."""
        return self.scores.to(torch.float64)

    def power_rows(self, degree: int) -> list[Tensor]:
        """``1, x, x^2, ...`` up to ``degree``, each ``(M,)`` (the ones expanded, not stored)."""
        rows = [self.values.new_ones(()).expand(self.values.shape[0]), self.values]
        if degree >= 2:
            rows.append(self.values * self.values)
        return rows

    def powers(self, degree: int, *shape: int) -> Tensor:
        """``(deg + 1, M)``: the rows ``1, x, x^2, ...`` as one tensor; ``(deg + 1, *shape)`` with the
        points viewed as ``shape``."""
        if degree == 1:  # the row of ones as padding: two operators
            values = self.values.view(1, *shape) if shape else self.values.unsqueeze(0)
            return torch.nn.functional.pad(values, (0, 0) * (values.dim() - 1) + (1, 0), value=1.0)
        rows = torch.stack(self.power_rows(degree))
        return rows.view(-1, *shape) if shape else rows


@dataclass(frozen=True)
class AdjointTable:
    """Per bucket, the polynomials in ``x`` of the adjoint sums of some kernels
    (:meth:`Windows.adjoint_table`): ``J`` rows per kernel, ``(K' J, L + 1)`` float64."""

    rows: Tensor
    kernels: tuple[int, ...]
    bases: tuple[float, ...]

    def of(self, kernel: int) -> tuple[Tensor, float]:
        """The ``(J, L + 1)`` rows of ``kernel`` and its base value."""
        if kernel not in self.kernels:
            raise ValueError(f"kernel {kernel} is not in this adjoint table (kernels {self.kernels})")
        index, per_kernel = self.kernels.index(kernel), self.rows.shape[0] // len(self.kernels)
        table = self.rows if len(self.kernels) == 1 else self.rows.narrow(0, index * per_kernel, per_kernel)
        return table, self.bases[index]


@dataclass
class _Grid:
    """The CPU's uniform bucketing grid: cell ``int(clamp((x - low) scale, 1, top))``."""

    scale: float
    low: float
    offset: Tensor | None  # () ``-low scale`` in the scores' dtype when ``scale`` is a power of two
    top: int
    base: Tensor | None = None  # (top + 1,) int32: edges below a cell's points, -1 if the cell holds one


class Windows:
    """The sorted window edges ``q_i + a_r`` of the queries for a set of kernels.

    Args:
        queries: ``(P,)`` query scores (any order), in the working dtype; ``P >= 1``.
        kernels: the kernels (hinge form) the sums will use.
        points: the scores of the largest point set these windows will bucket, if known: off the
            CPU's fast path, for 2^20 or more of them, zero-weight edges may be spread below the
            windows (:attr:`spread`, opt-in), so that the points below every window do not all share
            one bucket.
    """

    def __init__(self, queries: Tensor, kernels: HingeKernels, points: Tensor | None = None) -> None:
        self.kernels = kernels
        self.tables = kernels.tensors(queries.dtype, queries.device)
        # each edge's polynomial in x above it is written in the exact negated edge -(q_i + a_r)
        # (float64; the float32 scores promote exactly)
        negated = torch.sub(self.tables.negated_offsets64, queries)
        if queries.dtype == torch.float64 or kernels.float32_edges_exact:
            edges = torch.add(self.tables.offsets, queries)  # (m, P): edge (r, i) is a_r + q_i, exactly
            # "x above a closed edge e" is "x >= e", i.e. "x > e - 1 ulp" for scores of this dtype
            if self.tables.all_closed:
                edges = torch.nextafter(edges, self.tables.minus_infinity)
            elif self.tables.closed is not None:
                edges = torch.where(self.tables.closed, torch.nextafter(edges, self.tables.minus_infinity), edges)
        else:  # edges between float32 numbers: the float32 threshold that sorts every float32 point
            edges = self._float32_thresholds(negated)
        self.sorted_edges, self.order = torch.sort(edges.view(-1))
        self.num_edges = self.sorted_edges.numel()
        # A point is above edge e iff its bucket (number of edges strictly below it) is at least
        # T(e) = #(edges <= e). The moments above e are a suffix over the buckets: a cumulative sum
        # of the flipped table (rows L..0) read at L - T(e).
        self.above_index = torch.rsub(torch.searchsorted(self.sorted_edges, edges, right=True), self.num_edges)
        #: zero-weight edges in front of the sorted edges (buckets 0 to ``spread`` lie below every
        #: window); the index above stays right: it counts from the top of the table
        self.spread = 0
        if points is not None and _SPREAD_EDGES > 0 and points.numel() >= _SPREAD_MIN_POINTS and not (
                _CPU_FAST_PATHS and points.device.type == "cpu"):
            lowest = self.sorted_edges[:1]
            low = torch.minimum(points.amin(), lowest)  # (1,): not above the lowest edge
            # lerp stays at or below its end point: the spread edges stay below every real edge
            # (one out of order by rounding would only move points among the buckets below them)
            fractions = _spread_fractions(_SPREAD_EDGES, lowest.dtype, lowest.device)
            self.sorted_edges = torch.cat([torch.lerp(low, lowest, fractions), self.sorted_edges])
            self.spread = _SPREAD_EDGES
        self.num_buckets = self.num_edges + self.spread + 1
        # each edge's polynomial in x above it, by Horner in the exact negated edge: beta[(k,) j, r, i],
        # the coefficient of x^j
        coefficients = self.tables.power_coefficients
        beta = coefficients[-1]
        for power in range(len(coefficients) - 2, -1, -1):
            beta = torch.addcmul(coefficients[power], negated, beta)
        self.beta = beta
        self._betas: tuple[Tensor, ...] | None = None
        self._grid: _Grid | None = None
        self._reference: tuple[Tensor, Tensor] | None = None

    def _float32_thresholds(self, negated: Tensor) -> Tensor:
        """For edges ``E = q + a`` that are not float32 numbers (Parameterized AP's searched
        breakpoints): the largest float32 number ``t`` with "float32 ``x`` above ``E``" exactly when
        ``x > t``, i.e. ``E`` rounded down (``x > E`` iff ``x > t`` for every float32 ``x``), one ulp
        lower where ``E`` is a closed edge and a float32 number. Rounded to nearest instead, a point
        within half an ulp of an edge fell on the wrong side and took the next piece's slope (the
        largest gradient 6e-5 off at early-training logits, N = 4e4)."""
        rounded = negated.to(torch.float32)  # -E to nearest: -t is it, or one ulp higher
        back = rounded.to(torch.float64)
        tables = self.tables
        if tables.all_closed:
            high = back <= negated  # E <= the rounded E: E itself (closed) or above it
        elif tables.closed is None:
            high = back < negated  # E < the rounded E
        else:
            high = torch.where(tables.closed, back <= negated, back < negated)
        edges = rounded.neg_()
        return torch.where(high, torch.nextafter(edges, tables.minus_infinity), edges)

    # ------------------------------------------------------------------ points
    def points(self, scores: Tensor, keep: Tensor | None = None, buckets: Tensor | None = None,
               left_out: Tensor | None = None) -> PointSet:
        """Bucket ``scores`` (``keep``: only these take part; ``buckets``: already computed;
        ``left_out``: the positions of the points that do not take part, instead of ``keep``).

        Points left out share bucket 0 with the points below every edge: neither is above any edge.
        """
        if keep is not None and left_out is not None:
            raise ValueError("give the points that take part as keep or as left_out, not both")
        if buckets is None:
            buckets = self.bucketize(scores, keep)
            if left_out is not None:  # buckets of our own: in place
                buckets.index_fill_(0, left_out, 0)
        elif keep is not None:
            buckets = self._leave_out(buckets, keep)
        elif left_out is not None:
            buckets = buckets.index_fill(0, left_out, 0)
        return PointSet(buckets, scores, keep, left_out)

    def _leave_out(self, buckets: Tensor, keep: Tensor) -> Tensor:
        """``buckets`` with the points not kept below every window: bucket 0, or with spread edges
        point ``j`` in bucket ``j mod d`` (``d = interleaved_lanes(points, spread)``; every bucket up
        to :attr:`spread` is below every window), which spreads their atomic adds at no extra cost."""
        lanes = interleaved_lanes(buckets.numel(), self.spread) if self.spread else 1
        if lanes == 1:
            return torch.where(keep, buckets, 0)
        below = _spread_buckets(lanes, buckets.device)
        return torch.where(keep.view(-1, lanes), buckets.view(-1, lanes), below).view(-1)

    def bucketize(self, scores: Tensor, keep: Tensor | None = None) -> Tensor:
        """Number of edges strictly below each score in ``[0, L]`` (0 where ``keep`` is False):
        int64, or int32 where the CPU's grid buckets (every consumer takes either)."""
        if (scores.device.type != "cpu" or not _CPU_FAST_PATHS
                or scores.numel() < max(_GRID_MIN_POINTS, 8 * self.num_edges)):
            buckets = torch.searchsorted(self.sorted_edges, scores)
            if keep is None:
                return buckets
            if _CPU_FAST_PATHS and buckets.device.type == "cpu":  # in place: no second array
                return buckets.masked_fill_(~keep, 0)
            return self._leave_out(buckets, keep)
        # CPU: a uniform grid answers most points with one multiply-add and one look-up; points in a
        # cell that holds an edge are finished by binary search (exact either way). int32 cells and
        # table: half the memory traffic of int64 (this CPU, 16e6 points: 72 against 130 ms)
        grid = self._grid_tables(scores.numel())
        chunks = _cpu_chunks(scores)
        if chunks is None:
            return self._grid_buckets(scores, keep, grid)
        buckets = torch.empty(scores.shape, dtype=torch.int32)
        for chunk in chunks:
            self._grid_buckets(scores[chunk], None if keep is None else keep[chunk], grid, out=buckets[chunk])
        return buckets

    def _grid_buckets(self, scores: Tensor, keep: Tensor | None, grid: _Grid, out: Tensor | None = None) -> Tensor:
        buckets = torch.index_select(grid.base, 0, self._cells(scores, grid, keep), out=out)
        # the points in a cell holding an edge (base -1): the sign bit (an int32 shift is 3x faster
        # here than a comparison, whose boolean output is slow to write)
        dirty = buckets.bitwise_right_shift(31).nonzero().squeeze(1)
        found = torch.searchsorted(self.sorted_edges, scores.index_select(0, dirty), out_int32=True)
        return buckets.scatter_(0, dirty, found)

    @staticmethod
    def _cells(values: Tensor, grid: _Grid, keep: Tensor | None = None) -> Tensor:
        # a monotone map computed by the same operations for edges and points: an edge in a lower
        # cell is below the point, an edge in a higher cell above it. ``low`` is two cells below the
        # lowest edge, so the points below every edge share cell 1 with none; cell 0 is reserved for
        # the points left out (bucket 0 whatever the edges: no edge is there)
        if grid.offset is not None:  # (x - low) scale as one rounding of offset + scale x (exact product)
            cells = torch.add(grid.offset, values, alpha=grid.scale)
        else:
            cells = torch.sub(values, grid.low).mul_(grid.scale)
        cells = cells.clamp_(1.0, float(grid.top)).int()
        return cells if keep is None else cells.mul_(keep)  # (int32 times bool: 3x faster than float's)

    def _grid_tables(self, num_points: int) -> _Grid:
        if self._grid is None:
            inner = int(min(max(_GRID_CELLS_PER_EDGE * self.num_edges, _GRID_MIN_CELLS), _GRID_MAX_CELLS,
                            max(_GRID_MIN_CELLS, num_points // 4)))
            # the lowest and highest edge as numbers (a host read, which on the CPU waits for nothing)
            ends = self.sorted_edges[:: max(self.num_edges - 1, 1)].tolist()  # a strided view: no copy
            lowest, highest = ends[0], ends[-1]
            scale = inner / max(highest - lowest, 1e-30)
            # a power of two from 1 to 2^100 / |extent| (between inner / 2 and inner cells): then
            # scale x is exact, and offset + scale x one rounding whether or not it is fused
            power = 2.0 ** math.floor(math.log2(scale))
            exact = 1.0 <= power <= 2.0**100 / max(abs(lowest), abs(highest), 1.0)
            if exact:
                scale = power
            # ``low`` two cells below the lowest edge, and at least 8 float32 ulps below it (so that
            # it stays below once rounded to the scores' dtype) unless that would double the table
            margin = 2.0 / scale
            if margin < abs(lowest) * 2.0**-20 <= inner / scale:
                margin = abs(lowest) * 2.0**-20
            low = lowest - margin
            if self.sorted_edges.dtype == torch.float32:  # as the subtraction would round it
                low = struct.unpack("f", struct.pack("f", low))[0]
            top = int(math.ceil((highest - low) * scale)) + 4
            offset = self.sorted_edges.new_full((), -low * scale) if exact else None
            grid = _Grid(scale, low, offset, top)
            counts = torch.bincount(self._cells(self.sorted_edges, grid), minlength=top + 1)
            # cell c holds counts[c] edges; a point in a cell without an edge has the edges of the
            # lower cells below it, the cumulative count up to its own cell (which adds none); -1
            # where the cell holds one (finish by binary search); cell 0 holds none (base 0)
            grid.base = counts.cumsum(0, dtype=torch.int32).masked_fill_(counts > 0, -1)
            self._grid = grid
        return self._grid

    # ------------------------------------------------------------------ forward sums

    def query_sums(self, point_sets: Sequence[tuple[PointSet, Tensor | None]]) -> Tensor:
        """``F[i, k, c] = sum_j w_jc K_k(x_j - q_i)`` for every point set (channels ``c`` concatenated).

        Args:
            point_sets: pairs ``(points, weights)``; ``weights`` is ``(M, C)`` float64 or ``None``
                (one channel of ones).

        Returns:
            ``(P, K, C_total)`` float64; ``(P, C_total)`` for a single kernel.
        """
        degree = self.kernels.degree
        channels = sum(1 if weights is None else weights.shape[1] for _, weights in point_sets)
        # (channel, power, bucket): every accumulation runs along the last, contiguous dimension
        device = point_sets[0][0].scores.device
        cpu = _CPU_FAST_PATHS and device.type == "cpu"
        table = torch.zeros(channels, degree + 1, self.num_buckets, dtype=torch.float64, device=device)
        start = 0
        for points, weights in point_sets:
            if weights is None:  # one channel of ones
                if cpu:
                    self._cpu_accumulate(table.select(0, start), points, degree)
                else:
                    self._accumulate(table.select(0, start), points, degree)
                start += 1
                continue
            source = torch.einsum("mc,jm->cjm", weights, points.powers(degree))
            table.narrow(0, start, weights.shape[1]).index_add_(2, points.buckets, source)
            start += weights.shape[1]
        # moments of the points above each edge (suffix sums over the buckets), (C, J, m, P)
        above = table.flip(-1).cumsum(-1)[..., self.above_index]
        single = self.kernels.num_kernels == 1
        if cpu:  # a product and a sum: 2-3x faster than einsum here
            sums = (above * self.beta).sum((1, 2)).t() if single else \
                (above.unsqueeze(1) * self.beta).sum((2, 3)).permute(2, 1, 0)
        else:
            sums = torch.einsum("cjri,jri->ic" if single else "cjri,kjri->ikc", above, self.beta)
        if any(b != 0.0 for b in self.kernels.base):  # base * the weight of every point taking part
            totals = torch.cat([(points.keep.sum(0, keepdim=True).to(torch.float64) if points.keep is not None
                                 else torch.tensor([points.scores.numel() - (0 if points.left_out is None else
                                                                              points.left_out.numel())],
                                                   dtype=torch.float64, device=device))
                                if weights is None else weights.sum(0) for points, weights in point_sets])
            sums = sums + (self.tables.base[0] * totals if single else self.tables.base[:, None] * totals)
        return sums

    @staticmethod
    def _cpu_accumulate(table: Tensor, points: PointSet, degree: int) -> None:
        """The CPU's ``_accumulate``: the counts by ``bincount``, then a row per power (no ``(J, M)``
        array to fill); the float64 points made chunk by chunk for large sets."""
        counts, *rows = table.unbind(0)
        counts.copy_(torch.bincount(points.buckets, minlength=table.shape[1]))
        chunks = _cpu_chunks(points.scores)
        if chunks is None:
            pieces = [(points.index, points.values)]
        else:
            pieces = ((points.buckets[chunk].long(), points.scores[chunk].to(torch.float64)) for chunk in chunks)
        for index, x in pieces:  # (scatter_add_ with int64: 2x faster than index_add_ here)
            rows[0].scatter_add_(0, index, x)
            if degree >= 2:
                rows[1].scatter_add_(0, index, x * x)

    @staticmethod
    def _accumulate(table: Tensor, points: PointSet, degree: int) -> None:
        """``table[j, b] += sum of x^j over the points in bucket b`` (``table``: ``(J, L + 1)``)."""
        m = points.buckets.shape[0]
        lanes = _accumulation_lanes(m, table.numel())
        if lanes == 1:
            table.index_add_(1, points.buckets, points.powers(degree))
            return
        j, rows = degree + 1, m // lanes
        wide = table.new_zeros(j, table.shape[1], lanes)
        buckets = points.buckets.contiguous()  # (no operator: it is)
        # point r * lanes + l of every power row goes to bucket b, lane l: one strided view
        index = buckets.as_strided((j, rows, lanes), (0, lanes, 1))
        wide.scatter_add_(1, index, points.powers(degree, rows, lanes))
        torch.sum(wide, 2, out=table)

    # ------------------------------------------------------------------ adjoint sums
    def _cpu_point_sums(self, table: Tensor, points: PointSet) -> Tensor:
        """The CPU's evaluation of ``G`` for 2^15 points or more (``table``: ``(J, L + 1)``
        polynomials in ``x``, float64; fewer points take the device path's operators, fewer here).

        Horner after a look-up of each point's bucket row, chunk by chunk for large sets. For float32
        scores it runs in float32 about each bucket's lower edge ``r_b``, ``G = sum_j B_j (x - r_b)^j``
        with ``B`` re-expanded in float64: exact to float32 rounding, half the memory traffic. A
        bucket's coefficients are packed into one complex element (8 or 16 bytes), so that one
        look-up fetches them: on the CPU a look-up costs about as much for 16
        bytes as for 4 (this CPU, 1e5 points: ~90 us each; degree 1 took 3 of them, now 2).
        """
        relative = points.scores.dtype == torch.float32
        a = table.unbind(0)
        degree = len(a) - 1
        reference = last = None
        if relative:  # float32 rows about each bucket's lower edge r_b
            if self._reference is None:  # (L + 1,) float32 and float64, once per call (bucket 0
                # has no edge below it: its rows are constant, any reference serves, 0 here)
                reference = torch.nn.functional.pad(self.sorted_edges, (1, 0))
                self._reference = (reference, reference.to(torch.float64))
            reference, r = self._reference
            if degree == 1:  # (B_0, B_1) in 8 bytes, r_b in a second look-up
                rows = [torch.addcmul(a[0], a[1], r), a[1]]
            else:  # (r_b, B_0, B_1, B_2) in 16 bytes
                rows = [r, torch.addcmul(a[0], torch.addcmul(a[1], a[2], r), r),
                        torch.addcmul(a[1], a[2], r, value=2.0), a[2]]
                reference = None
            packed = torch.stack(rows, 1).to(torch.float32)
            if degree == 2:
                packed = packed.view(torch.float64)
        else:  # float64 scores: (c_0, c_1) in one look-up, c_2 in a second
            packed = torch.stack(a[:2], 1)
            last = a[2] if degree == 2 else None
        packed = torch.view_as_complex(packed)  # one element per bucket: its row

        def packed_horner(index: Tensor, x: Tensor, out: Tensor | None = None,
                          looked: Tensor | None = None) -> Tensor:
            row = torch.view_as_real(torch.gather(packed, 0, index, out=looked))
            if row.dtype != x.dtype:
                row = row.view(x.dtype)
            row = row.unbind(1)
            if reference is not None:
                deviation = reference.index_select(0, index)
                deviation = torch.sub(x, deviation, out=deviation)
            elif relative:
                deviation = torch.sub(x, row[0], out=row[0])  # in the look-up's own memory
                row = row[1:]
            else:
                deviation = x
                if last is not None:
                    row = (*row, last.index_select(0, index))
            sums = row[degree]
            for power in range(degree - 1, 0, -1):
                sums = torch.addcmul(row[power], sums, deviation)
            return torch.addcmul(row[0], sums, deviation, out=out)

        chunks = _cpu_chunks(points.scores)
        if chunks is None:
            return packed_horner(points.index, points.scores if relative else points.values)
        sums = torch.empty(points.scores.shape, dtype=points.scores.dtype)
        looked = packed.new_empty(_CPU_CHUNK)  # one look-up buffer for every chunk
        for chunk in chunks:
            x = points.scores[chunk]
            packed_horner(points.buckets[chunk].long(), x if relative else x.to(torch.float64), out=sums[chunk],
                          looked=looked[: x.shape[0]])
        return sums

    def _kernel_beta(self, kernel: int) -> Tensor:
        """:attr:`beta` of one kernel (several kernels: split once per call)."""
        if self._betas is None:
            self._betas = self.beta.unbind(0)
        return self._betas[kernel]

    def adjoint_table(self, coefficients: Tensor, kernels: Sequence[int] = (0,)) -> AdjointTable:
        """The polynomials in ``x`` that give ``G = sum_i c_i K_k(x - q_i)`` in every bucket, for each
        of ``kernels``: built once, evaluated at any point set by :meth:`point_sums`."""
        kernels = tuple(kernels)
        if self.kernels.num_kernels == 1:
            beta = self.beta  # (J, m, P)
        elif len(kernels) == 1:
            beta = self._kernel_beta(kernels[0])
        elif kernels == tuple(range(kernels[0], kernels[0] + len(kernels))):
            beta = self.beta.narrow(0, kernels[0], len(kernels))  # (K', J, m, P): a view
        else:
            beta = torch.stack([self._kernel_beta(k) for k in kernels])
        # per-edge polynomials in x (one row per power), in sorted edge order, cumulated: bucket b
        # has the b lowest edges below it (bucket 0, and the points left out: none; with spread
        # edges, buckets 0 to spread: none either); (K' J, L + 1 + spread)
        per_edge = beta * coefficients
        cumulative = per_edge.reshape(-1, self.num_edges).index_select(1, self.order).cumsum(1)
        table = torch.nn.functional.pad(cumulative, (1 + self.spread, 0))
        bases = [self.kernels.base[k] for k in kernels]
        if any(bases):  # every point taking part also sees base * sum(c)
            total, rows = coefficients.sum(), self.kernels.degree + 1
            for index, base in enumerate(bases):
                if base:
                    table[index * rows] += base * total
        return AdjointTable(table, kernels, tuple(bases))

    def point_sums(self, points: PointSet, coefficients: Tensor | AdjointTable, kernel: int = 0,
                   scale: float = 1.0) -> Tensor:
        """``G_j = scale sum_i c_i K_kernel(x_j - q_i)`` for every point (0 for points left out),
        ``(M,)``: float64, or float32 for 2^15 or more float32 scores on the CPU's fast path.

        ``coefficients``: ``c`` (``(P,)`` float64), or an :meth:`adjoint_table` holding ``kernel``.
        """
        if not isinstance(coefficients, AdjointTable):
            coefficients = self.adjoint_table(coefficients, (kernel,))
        table, base = coefficients.of(kernel)
        if scale != 1.0:
            table = table * scale
        if _CPU_FAST_PATHS and table.device.type == "cpu" and points.scores.shape[0] >= _GRID_MIN_POINTS:
            sums = self._cpu_point_sums(table, points)
        else:
            # one 1-D look-up per power (a row gather of (L + 1, J) is one thread block per point on
            # CUDA: 30 ms for 1e8 points on an H100, against ~1 ms for the look-ups)
            columns = table.unbind(0)
            sums = torch.take(columns[-1], points.buckets)
            for power in range(len(columns) - 2, -1, -1):  # Horner in x
                sums = torch.addcmul(torch.take(columns[power], points.buckets), sums, points.values)
        return self._leave_out_sums(sums, points) if base else sums

    @staticmethod
    def _leave_out_sums(sums: Tensor, points: PointSet) -> Tensor:
        """``sums`` (points last) with 0 for the points left out (a kernel with a base value gives
        them that base otherwise)."""
        if points.keep is not None:
            return torch.where(points.keep, sums, 0.0)
        if points.left_out is not None:
            return sums.index_fill(-1, points.left_out, 0.0)
        return sums

    def table_point_sums(self, points: PointSet, table: AdjointTable) -> Tensor:
        """:meth:`point_sums` of every kernel of ``table`` at once, ``(K', M)`` float64: one look-up
        of the table's rows for a few points (e.g. the positives), then Horner in ``x``."""
        rows = table.rows.index_select(1, points.buckets)  # (K' J, M)
        powers = rows.view(len(table.kernels), table.rows.shape[0] // len(table.kernels), -1).unbind(1)
        sums = powers[-1]
        for power in range(len(powers) - 2, -1, -1):
            sums = torch.addcmul(powers[power], sums, points.values)
        return self._leave_out_sums(sums, points) if any(table.bases) else sums
