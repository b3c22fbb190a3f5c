"""Piecewise-polynomial kernels of a score difference.

Every ranking loss in this package compares a positive's score ``q`` with another score ``x``
through a kernel ``K(d)`` of the difference ``d = x - q``:

* AP-Loss, aLRP Loss and Rank & Sort Loss use the smoothed step (Chen et al., CVPR 2019, Eq. 7)
  ``H(d) = clamp(d / (2 delta) + 1/2, 0, 1)``, or the exact step ``[d >= 0]`` when ``delta = 0``;
* Parameterized AP Loss (Tao et al., 2021) uses ``H(clamp(d / 2 + 1/2, 0, 1))`` for a monotone
  piecewise-linear ``H`` given by control points, or its hand-crafted ``square`` variant.

All of them are piecewise polynomials of degree <= 2 in ``d`` with finitely many breakpoints
``a_0 <= ... <= a_m`` and *constant* outside ``[a_0, a_m]``. That is what makes the exact
``O((N + P) log P)`` evaluation in :mod:`detlosses.ranking.engine` possible: for a query ``q``
the breakpoints ``q + a_r`` cut the real line into ``m + 2`` regions, and on region ``r``

    ``K(x - q) = c[r, 0] + c[r, 1] (x - q) + c[r, 2] (x - q)^2``.

A value ``x`` exactly on a breakpoint belongs to the region on its right when ``closed_right``
is true (``[d >= 0]`` needs this) and to the region on its left otherwise; a left-closed kernel
may name breakpoints that are right-closed nonetheless (``right_closed_at``). For continuous
kernels this only decides which one-sided derivative is used at a kink. The control-point
kernels use the conventions of autograd on the released formula: the left segment at an inner
control point (the released interpolation), and 0 at ``d = +-1`` where ``clamp`` saturates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import torch
from torch import Tensor

__all__ = ["PiecewisePolynomialKernel", "smoothed_step", "control_point_kernel", "square_kernel"]


@dataclass(frozen=True)
class PiecewisePolynomialKernel:
    """``K(d)`` given by breakpoints and one polynomial (in ``d``) per region.

    Attributes:
        breakpoints: ``a_0 <= ... <= a_m`` (at least one).
        coefficients: ``m + 2`` rows ``(c0, c1, c2)``; row ``r`` is the polynomial on the region
            between ``a_{r-1}`` and ``a_r`` (row 0: below ``a_0``, last row: above ``a_m``).
            The outer rows must be constant (``c1 = c2 = 0``).
        closed_right: whether a difference exactly equal to a breakpoint takes the region on its
            right (``True``) or on its left (``False``).
        right_closed_at: breakpoints of a left-closed kernel that are right-closed nonetheless.
    """

    breakpoints: tuple[float, ...]
    coefficients: tuple[tuple[float, float, float], ...]
    closed_right: bool = False
    right_closed_at: frozenset[float] = frozenset()

    def __post_init__(self) -> None:
        if len(self.breakpoints) < 1:
            raise ValueError("a kernel needs at least one breakpoint")
        if any(b > a for a, b in zip(self.breakpoints[1:], self.breakpoints[:-1], strict=True)):
            raise ValueError(f"kernel breakpoints must be non-decreasing, got {self.breakpoints}")
        if len(self.coefficients) != len(self.breakpoints) + 1:
            raise ValueError(
                f"a kernel with {len(self.breakpoints)} breakpoints needs {len(self.breakpoints) + 1} "
                f"regions of coefficients, got {len(self.coefficients)}"
            )
        for row in (self.coefficients[0], self.coefficients[-1]):
            if row[1] != 0.0 or row[2] != 0.0:
                raise ValueError("a kernel must be constant below its first and above its last breakpoint")
        if self.right_closed_at and (self.closed_right or not self.right_closed_at <= set(self.breakpoints)):
            raise ValueError("right_closed_at must name breakpoints of a left-closed kernel")

    @property
    def degree(self) -> int:
        """Highest power of ``d`` with a non-zero coefficient (0, 1 or 2)."""
        deg = 0
        for row in self.coefficients:
            for power in (1, 2):
                if row[power] != 0.0:
                    deg = max(deg, power)
        return deg

    def derivative(self) -> PiecewisePolynomialKernel:
        """``K'(d)`` on the same regions (one-sided at the breakpoints, as ``closed_right`` says)."""
        rows = tuple((c1, 2.0 * c2, 0.0) for _, c1, c2 in self.coefficients)
        return PiecewisePolynomialKernel(self.breakpoints, rows, self.closed_right, self.right_closed_at)

    def mirrored(self) -> PiecewisePolynomialKernel:
        """``K(-d)``: breakpoints negated and reversed, closure flipped."""
        if self.right_closed_at:
            raise ValueError("mirroring a kernel with mixed closure is not supported")
        breakpoints = tuple(-b for b in reversed(self.breakpoints))
        rows = tuple((c0, -c1, c2) for c0, c1, c2 in reversed(self.coefficients))
        return PiecewisePolynomialKernel(breakpoints, rows, not self.closed_right)

    def scaled(self, factor: float) -> PiecewisePolynomialKernel:
        """``factor * K(d)``."""
        rows = tuple(tuple(factor * c for c in row) for row in self.coefficients)
        return PiecewisePolynomialKernel(  # type: ignore[arg-type]
            self.breakpoints, rows, self.closed_right, self.right_closed_at
        )

    def refined(self, breakpoints: Sequence[float]) -> PiecewisePolynomialKernel:
        """The same function on a finer breakpoint set (a superset of :attr:`breakpoints`).

        Lets kernels with different breakpoints share one bucketing of the points.
        """
        fine = tuple(sorted(float(b) for b in breakpoints))
        missing = set(self.breakpoints) - set(fine)
        if missing:
            raise ValueError(f"refined breakpoints must include the kernel's own; missing {sorted(missing)}")
        rows = []
        for region in range(len(fine) + 1):
            # A representative difference strictly inside the fine region (or on its edge if empty).
            if region == 0:
                probe = fine[0] - 1.0
            elif region == len(fine):
                probe = fine[-1] + 1.0
            else:
                probe = 0.5 * (fine[region - 1] + fine[region])
            rows.append(self.coefficients[self._region_of(probe)])
        kept = frozenset(b for b in self.right_closed_at if b in fine)
        return PiecewisePolynomialKernel(fine, tuple(rows), self.closed_right, kept)

    def _region_of(self, d: float) -> int:
        region = 0
        for b in self.breakpoints:
            if d > b or (d == b and (self.closed_right or b in self.right_closed_at)):
                region += 1
        return region

    @cached_property
    def _is_smoothed_step(self) -> bool:
        return (
            len(self.breakpoints) == 2
            and self.breakpoints[0] == -self.breakpoints[1] < 0
            and self.coefficients == ((0.0, 0.0, 0.0), (0.5, 0.5 / self.breakpoints[1], 0.0), (1.0, 0.0, 0.0))
        )

    @cached_property
    def _coefficients64(self) -> Tensor:
        return torch.tensor(self.coefficients, dtype=torch.float64)

    def coefficient_tensor(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(m + 2, 3)`` tensor of the region coefficients (made once per dtype and device: no
        host-to-device copy per call, which a CUDA graph could not record)."""
        return _coefficient_tensor(self, dtype, torch.device(device))

    def value_at(self, d: float) -> float:
        """``K(d)`` for one number."""
        c0, c1, c2 = self.coefficients[self._region_of(d)]
        return c0 + d * (c1 + d * c2)

    def pairwise(self, queries: Tensor, points: Tensor, out: Tensor | None = None) -> Tensor:
        """``K(points[k] - queries[i])`` for every pair, ``(len(queries), len(points))`` (written
        into ``out`` when given).

        The smoothed step is ``clamp(x_k c - (q_i c - 1/2), 0, 1)`` (``c = 1 / (2 delta)``): one
        subtraction and one clamp over the pairs instead of four passes (exact up to rounding).
        """
        if self._is_smoothed_step:
            slope = self.coefficients[1][1]
            scaled = points * slope
            shifted = (scaled if queries is points else queries * slope) - 0.5  # (the same scaling)
            return torch.sub(scaled, shifted[:, None], out=out).clamp_(0.0, 1.0)
        values = self(torch.sub(points[None, :], queries[:, None], out=out))
        return values if out is None else out.copy_(values)

    def __call__(self, d: Tensor) -> Tensor:
        """Evaluate ``K`` elementwise (dense: Rank & Sort's pairs of positives, tests)."""
        if self._is_smoothed_step:  # clamp(d / (2 delta) + 1/2, 0, 1) in three operators
            return d.mul(self.coefficients[1][1]).add_(0.5).clamp_(0.0, 1.0)
        region = torch.zeros(d.shape, dtype=torch.long, device=d.device)
        for b in self.breakpoints:
            closed = self.closed_right or b in self.right_closed_at
            region += (d >= b) if closed else (d > b)
        c = self.coefficient_tensor(d.dtype, d.device)[region]
        return c[..., 0] + d * (c[..., 1] + d * c[..., 2])


@cache
def _coefficient_tensor(kernel: PiecewisePolynomialKernel, dtype: torch.dtype, device: torch.device) -> Tensor:
    return kernel._coefficients64.to(device=device, dtype=dtype)


@cache
def smoothed_step(delta: float) -> PiecewisePolynomialKernel:
    """``H(d) = clamp(d / (2 delta) + 1/2, 0, 1)``; for ``delta = 0`` the step ``[d >= 0]``."""
    delta = float(delta)
    if delta < 0.0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if delta == 0.0:
        return PiecewisePolynomialKernel((0.0,), ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)), closed_right=True)
    slope = 1.0 / (2.0 * delta)
    return PiecewisePolynomialKernel(
        (-delta, delta), ((0.0, 0.0, 0.0), (0.5, slope, 0.0), (1.0, 0.0, 0.0)), closed_right=False
    )


def control_point_kernel(xs: Sequence[float], ys: Sequence[float]) -> PiecewisePolynomialKernel:
    """``K(d) = f(clamp(d / 2 + 1/2, 0, 1))`` for the piecewise-linear ``f`` through ``(xs, ys)``.

    ``xs`` must start at 0, end at 1 and be non-decreasing. Zero-width segments are empty regions.
    """
    xs = [float(v) for v in xs]
    ys = [float(v) for v in ys]
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("control points need matching x and y lists of length >= 2")
    breakpoints = tuple(2.0 * x - 1.0 for x in xs)
    rows: list[tuple[float, float, float]] = [(ys[0], 0.0, 0.0)]
    for k in range(len(xs) - 1):
        width = xs[k + 1] - xs[k]
        if width <= 0.0:
            rows.append((ys[k], 0.0, 0.0))  # empty region: never selected
            continue
        slope = (ys[k + 1] - ys[k]) / width  # df/dx
        # f(x) = y_k + slope (x - x_k) with x = d/2 + 1/2
        rows.append((ys[k] + slope * (0.5 - xs[k]), 0.5 * slope, 0.0))
    rows.append((ys[-1], 0.0, 0.0))
    # clamp saturates at d = 1: the derivative there is 0, as autograd gives
    return PiecewisePolynomialKernel(breakpoints, tuple(rows), closed_right=False, right_closed_at=frozenset({1.0}))


def square_kernel() -> PiecewisePolynomialKernel:
    """``clamp(d / 2 + 1/2, 0, 1) ** 2`` (the ``square`` preset of Parameterized AP Loss)."""
    return PiecewisePolynomialKernel(
        (-1.0, 1.0), ((0.0, 0.0, 0.0), (0.25, 0.5, 0.25), (1.0, 0.0, 0.0)), closed_right=False,
        right_closed_at=frozenset({1.0}),
    )
