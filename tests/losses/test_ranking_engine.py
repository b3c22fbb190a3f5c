"""The exact window engine: bucketing at the boundaries, sums and adjoints against dense ones."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detlosses.ranking import HingeKernels, Windows, control_point_kernel, smoothed_step, square_kernel
from detlosses.ranking.engine import set_cpu_fast_paths
from detlosses.ranking.kernels import PiecewisePolynomialKernel

STEP_CLOSED = PiecewisePolynomialKernel((0.0,), ((0.0, 0.0, 0.0), (0.5, 0.0, 0.0)), closed_right=True)
STEP_OPEN = PiecewisePolynomialKernel((0.0,), ((0.0, 0.0, 0.0), (0.5, 0.0, 0.0)), closed_right=False)
CONTROL = control_point_kernel([0, 0.3, 0.3, 0.5, 0.9, 1], [0, 0.1, 0.4, 0.4, 0.95, 1])
BANKS = {
    "step": (smoothed_step(0.0),),
    "smoothed": (smoothed_step(0.5),),
    "control+derivative": (CONTROL, CONTROL.derivative()),
    "square": (square_kernel(), square_kernel().derivative()),
    "half-open steps": (STEP_CLOSED, STEP_OPEN),
    "shifted": (PiecewisePolynomialKernel((-0.25, 0.5), ((0.3, 0, 0), (0.3, 1.0, -0.5), (0.55, 0, 0))),),
}


@pytest.fixture
def small_grid(monkeypatch):
    """Use the CPU bucketing grid from 32k points on (normally only for millions)."""
    monkeypatch.setattr("detlosses.ranking.engine._GRID_MIN_POINTS", 32_768)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("num_queries", "kernels", "spread"), [
    (300, (smoothed_step(0.5), STEP_CLOSED), 1.0),  # a power-of-two scale: one fused operation
    (300, (smoothed_step(0.5), STEP_CLOSED), 1e5),  # edges wider than the cells: scale < 1, two
    (1, (STEP_CLOSED,), 1.0),  # one edge: a zero-width grid
])
def test_grid_bucketing_equals_binary_search_at_every_boundary(dtype, num_queries, kernels, spread, small_grid):
    g = torch.Generator().manual_seed(0)
    queries = torch.round(torch.randn(num_queries, generator=g) * 8).to(dtype) / 8 * spread
    windows = Windows(queries, HingeKernels.of(*kernels))
    edges = windows.sorted_edges
    near = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])
    points = torch.cat([near, torch.randn(100_003, generator=g).to(dtype) * 3 * spread,
                        edges.new_tensor([-1e30, 1e30, 0.0, 1e-40])])
    points = points[torch.randperm(points.numel(), generator=g)]
    assert points.numel() > 32_768  # exercises the grid
    assert (windows._grid_tables(points.numel()).offset is not None) == (spread == 1.0 and num_queries > 1)
    expected = torch.searchsorted(edges, points)
    torch.testing.assert_close(windows.bucketize(points).long(), expected, rtol=0, atol=0)


@given(
    bank=st.sampled_from(sorted(BANKS)),
    fast=st.booleans(),
    p=st.integers(1, 40),
    n=st.integers(0, 300),
    seed=st.integers(0, 10_000),
    tied=st.booleans(),
)
def test_sums_and_adjoint_match_dense(bank, fast, p, n, seed, tied):
    """Both paths: the CPU's own (``fast``) and the operators a CUDA call runs."""
    set_cpu_fast_paths(fast)
    try:
        _check_sums_and_adjoint(bank, p, n, seed, tied)
    finally:
        set_cpu_fast_paths(True)


def _check_sums_and_adjoint(bank, p, n, seed, tied):
    kernels = BANKS[bank]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p, generator=g, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 2
    if tied:  # exact ties between points, queries and window edges
        q, x = torch.round(q * 4) / 4, torch.round(x * 4) / 4
    keep = torch.rand(n, generator=g) < 0.8
    w = torch.rand(p, 2, generator=g, dtype=torch.float64)
    c = torch.randn(p, generator=g, dtype=torch.float64)
    windows = Windows(q, HingeKernels.of(*kernels))
    points = windows.points(x, keep=keep)
    own = windows.points(q)
    sums = windows.query_sums([(points, None), (own, w)])  # (P, K, 1 + 2), (P, 1 + 2) for one kernel
    if len(kernels) == 1:
        sums = sums.unsqueeze(1)
    for index, kernel in enumerate(kernels):
        dense = kernel(x[None, :] - q[:, None]) * keep  # (P, N)
        dense_own = kernel(q[None, :] - q[:, None])  # (P, P)
        torch.testing.assert_close(sums[:, index, 0], dense.sum(1), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(sums[:, index, 1:], dense_own @ w, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(windows.point_sums(points, c, index), dense.T @ c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(windows.point_sums(own, c, index), dense_own.T @ c, rtol=1e-10, atol=1e-10)
    # the same points left out by position instead of a mask (the CPU's fast path for the negatives)
    by_position = windows.points(x, left_out=(~keep).nonzero().view(-1))
    torch.testing.assert_close(by_position.buckets.long(), points.buckets.long(), rtol=0, atol=0)
    again = windows.query_sums([(by_position, None), (own, w)])
    torch.testing.assert_close(again, sums.squeeze(1) if len(kernels) == 1 else sums, rtol=0, atol=0)
    # every kernel's adjoint from one table at once, at both point sets
    table = windows.adjoint_table(c, tuple(range(len(kernels))))
    for at in (points, by_position, own):
        at_once = windows.table_point_sums(at, table)
        assert at_once.shape == (len(kernels), at.scores.numel())
        for index in range(len(kernels)):
            torch.testing.assert_close(at_once[index], windows.point_sums(at, c, index), rtol=1e-12, atol=1e-12)
            if at is not own:
                torch.testing.assert_close(windows.point_sums(by_position, c, index),
                                           windows.point_sums(points, c, index), rtol=0, atol=0)


def test_points_are_left_out_by_mask_or_by_position_not_both():
    windows = Windows(torch.zeros(3, dtype=torch.float64), HingeKernels.of(smoothed_step(0.5)))
    x = torch.randn(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="keep or as left_out, not both"):
        windows.points(x, keep=x > 0, left_out=torch.tensor([1]))
    buckets = windows.points(x).buckets
    left = windows.points(x, buckets=buckets, left_out=torch.tensor([2, 5]))  # given buckets: not in place
    assert left.buckets[2] == 0 and left.buckets[5] == 0 and torch.equal(buckets, windows.points(x).buckets)


def test_hinge_form_is_the_same_function():
    d = torch.linspace(-2, 2, 4001, dtype=torch.float64)
    d = torch.cat([d, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, -0.4, 0.6], dtype=torch.float64)])
    for kernels in BANKS.values():
        hinge = HingeKernels.of(*kernels)
        for k, kernel in enumerate(kernels):
            value = torch.full_like(d, hinge.base[k])
            for a, closed, alpha in zip(hinge.breakpoints, hinge.closed, hinge.alpha, strict=True):
                above = (d >= a) if closed else (d > a)
                value += above * sum(alpha[power][k] * (d - a) ** power for power in range(3))
            torch.testing.assert_close(value, kernel(d), rtol=1e-12, atol=1e-12)


def test_kernel_validation():
    with pytest.raises(ValueError, match="non-decreasing"):
        PiecewisePolynomialKernel((1.0, 0.0), ((0, 0, 0), (0, 0, 0), (0, 0, 0)))
    with pytest.raises(ValueError, match="constant below its first"):
        PiecewisePolynomialKernel((0.0,), ((0, 1, 0), (0, 0, 0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bank", sorted(BANKS))
def test_cpu_chunks_give_the_same_buckets_sums_and_adjoint(bank, dtype, monkeypatch):
    """The CPU's per-point work in chunks (from a million points on) against the same work in one
    piece (itself checked against dense sums above): ties, points on the edges, points left out, a
    shorter last chunk."""
    from detlosses.ranking import engine

    kernels = HingeKernels.of(*BANKS[bank])
    g = torch.Generator().manual_seed(7)
    q = (torch.round(torch.randn(40, generator=g, dtype=torch.float64) * 4) / 4).to(dtype)
    edges = Windows(q, kernels).sorted_edges
    x = torch.cat([edges, torch.randn(4000, generator=g, dtype=torch.float64).to(dtype) * 2,
                   torch.round(torch.randn(1000, generator=g, dtype=torch.float64) * 4).to(dtype) / 4])
    order = torch.randperm(x.numel(), generator=g)
    x, off_edges = x[order], order >= edges.numel()
    keep = torch.rand(x.numel(), generator=g) < 0.8
    c = torch.randn(40, generator=g, dtype=torch.float64)
    monkeypatch.setattr(engine, "_GRID_MIN_POINTS", 1)

    left_out = (~keep).nonzero().view(-1)

    def evaluate(by_position=False):
        windows = Windows(q, kernels)
        points = windows.points(x, left_out=left_out) if by_position else windows.points(x, keep=keep)
        sums = windows.query_sums([(points, None)]).reshape(40, kernels.num_kernels)
        adjoint = torch.stack([windows.point_sums(points, c, k) for k in range(kernels.num_kernels)], 1)
        return points.buckets, sums, adjoint

    whole = evaluate()
    for got, want in zip(evaluate(by_position=True), whole, strict=True):  # the points left out by position
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the one-piece adjoint (bucket rows packed into one complex look-up) against dense float64, at
    # the points off the edges (on an edge, x - q need not round to the breakpoint)
    q64, x64 = q.to(torch.float64), x[off_edges].to(torch.float64)
    for k, kernel in enumerate(BANKS[bank]):
        dense = (kernel(x64[None, :] - q64[:, None]) * keep[off_edges]).T @ c
        tolerance = 1e-5 * float(c.abs().sum()) if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(whole[2][off_edges, k].to(torch.float64), dense, rtol=0, atol=tolerance)
    monkeypatch.setattr(engine, "_CPU_CHUNK_MIN_POINTS", 1)
    monkeypatch.setattr(engine, "_CPU_CHUNK", 97)  # 54 chunks, the last one shorter
    assert engine._cpu_chunks(x) is not None
    for by_position in (False, True):
        buckets, sums, adjoint = evaluate(by_position)
        assert buckets.dtype == torch.int32
        torch.testing.assert_close(buckets.long(), torch.searchsorted(edges, x) * keep, rtol=0, atol=0)
        torch.testing.assert_close(sums, whole[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(adjoint, whole[2], rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-9)


@pytest.mark.parametrize("m", [1024 * 13, 64 * 157, 64 * 157 + 8, 64 * 157 + 1])  # 1024, 64, 8 and 1 lanes (L = 60)
@pytest.mark.parametrize("bank", ["smoothed", "square"])
def test_lane_accumulation_gives_the_same_sums(bank, m, monkeypatch):
    """The device path's interleaved accumulation (many points) equals the dense sums, points left
    out and points in one crowded bucket included."""
    monkeypatch.setattr("detlosses.ranking.engine._LANES_MIN_POINTS", 1)
    kernels = BANKS[bank]
    g = torch.Generator().manual_seed(m)
    q = torch.randn(30, generator=g, dtype=torch.float64)
    x = torch.cat([torch.randn(m // 2, generator=g, dtype=torch.float64),
                   torch.full((m - m // 2,), -50.0, dtype=torch.float64)])  # half below every window
    keep = torch.rand(m, generator=g) < 0.9
    set_cpu_fast_paths(False)
    try:
        windows = Windows(q, HingeKernels.of(*kernels))
        sums = windows.query_sums([(windows.points(x, keep=keep), None)])
    finally:
        set_cpu_fast_paths(True)
    if len(kernels) == 1:
        sums = sums.unsqueeze(1)
    for index, kernel in enumerate(kernels):
        dense = kernel(x[None, :] - q[:, None]) * keep
        torch.testing.assert_close(sums[:, index, 0], dense.sum(1), rtol=1e-10, atol=1e-10)


def test_accumulation_lanes_divide_the_points_and_keep_the_copies_small():
    from detlosses.ranking.engine import _accumulation_lanes, interleaved_lanes

    # the one rule of every interleaving (the engine's tables, the spread edges, GHM's histogram)
    assert [interleaved_lanes(n, 32) for n in (96, 64, 40, 12, 7)] == [32, 32, 8, 1, 1]

    big = 1 << 21
    assert _accumulation_lanes(1 << 16, 122) == 1  # few points: one table
    assert _accumulation_lanes(big, 2 * 61) == 1024  # few edges: the most copies
    assert _accumulation_lanes(big, 2 * 8193) == 64  # a graph's 4096 positive slots: 64 copies, 8 MiB
    assert _accumulation_lanes(big, 2 * 8001) == 128  # P = 4000
    assert _accumulation_lanes(big, 2 * 2001) == 512
    assert _accumulation_lanes(10**6, 2 * 2001) == 64  # N = 1e6 = 2^6 * 5^6
    assert _accumulation_lanes(big + 8, 2 * 61) == 8  # the largest power of two dividing the points
    assert _accumulation_lanes(big + 4, 2 * 61) == 1  # fewer than 8: one table
    assert _accumulation_lanes(big, 1 << 20) == 1  # a table too large to copy
    for points, table in ((big, 122), (big, 16002), (3 * big, 4002), (big + 8, 122)):
        lanes = _accumulation_lanes(points, table)
        assert points % lanes == 0 and (lanes == 1 or lanes * table <= 1 << 21)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("bank", ["control+derivative", "half-open steps", "square"])
def test_one_adjoint_table_for_several_kernels(bank, fast):
    """A table built for several kernels (in any order) gives each kernel's own adjoint, scaled."""
    set_cpu_fast_paths(fast)
    try:
        g = torch.Generator().manual_seed(3)
        q = torch.round(torch.randn(30, generator=g, dtype=torch.float64) * 4) / 4
        x = torch.randn(500, generator=g, dtype=torch.float64) * 2
        keep = torch.rand(500, generator=g) < 0.8
        c = torch.randn(30, generator=g, dtype=torch.float64)
        windows = Windows(q, HingeKernels.of(*BANKS[bank]))
        points, own = windows.points(x, keep=keep), windows.points(q)
        for order in ((0, 1), (1, 0)):
            table = windows.adjoint_table(c, order)
            for k in order:
                for at in (points, own):
                    torch.testing.assert_close(windows.point_sums(at, table, k, scale=-0.5),
                                               -0.5 * windows.point_sums(at, c, k), rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="kernel 1 is not in this adjoint table"):
            windows.point_sums(points, windows.adjoint_table(c, (0,)), 1)
    finally:
        set_cpu_fast_paths(True)


@pytest.mark.parametrize("lanes", [True, False])
@pytest.mark.parametrize("spread", [64, 1024])
@pytest.mark.parametrize("bank", ["smoothed", "control+derivative", "half-open steps", "shifted"])
def test_spread_edges_change_no_sum_and_split_the_crowd_below(bank, spread, lanes, monkeypatch):
    """Zero-weight edges below the windows (the device path's opt-in spread) leave every sum and
    adjoint as it was (against dense float64 ones, points left out and a kernel with a base value
    included), and the crowd below every window no longer shares one bucket."""
    monkeypatch.setattr("detlosses.ranking.engine._SPREAD_MIN_POINTS", 1)
    monkeypatch.setattr("detlosses.ranking.engine._SPREAD_EDGES", spread)
    if lanes:
        monkeypatch.setattr("detlosses.ranking.engine._LANES_MIN_POINTS", 1)
    kernels = BANKS[bank]
    g = torch.Generator().manual_seed(spread)
    m = 64 * 157
    q = torch.randn(30, generator=g, dtype=torch.float64)
    x = torch.cat([torch.randn(m // 4, generator=g, dtype=torch.float64),  # most far below every window
                   -8.0 + 0.3 * torch.randn(m - m // 4, generator=g, dtype=torch.float64)])
    keep = torch.rand(m, generator=g) < 0.9
    c = torch.randn(30, generator=g, dtype=torch.float64)
    set_cpu_fast_paths(False)
    try:
        windows = Windows(q, HingeKernels.of(*kernels), points=x)
        points, own = windows.points(x, keep=keep), windows.points(q)
        sums = windows.query_sums([(points, None)]).reshape(30, len(kernels))
        adjoints = [(windows.point_sums(points, c, k), windows.point_sums(own, c, k)) for k in range(len(kernels))]
    finally:
        set_cpu_fast_paths(True)
    assert windows.spread == spread and windows.sorted_edges.numel() == spread + windows.num_edges
    for index, kernel in enumerate(kernels):
        dense = kernel(x[None, :] - q[:, None]) * keep
        torch.testing.assert_close(sums[:, index], dense.sum(1), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(adjoints[index][0], dense.T @ c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(adjoints[index][1], kernel(q[None, :] - q[:, None]).T @ c, rtol=1e-10, atol=1e-10)
    below = points.buckets[keep & (x < -4.0)]
    assert int(below.max()) <= spread  # no real edge below them
    # over many buckets, not one: the fullest holds at most 16 times an even share (2-20 % here)
    assert int(torch.bincount(below).max()) <= 16 * below.numel() // spread
    left_out = points.buckets[~keep]
    assert int(left_out.max()) < spread and left_out.unique().numel() >= 8  # the points left out cycle too


def test_losses_with_spread_edges_equal_the_losses_without(monkeypatch):
    """The four ranking losses on the device path, late-training logits (most negatives far below
    every window, 2% ignored): values and gradients the same with and without spread edges."""
    from .test_static_shapes import _all_four, _assert_same  # noqa: PLC0415

    g = torch.Generator().manual_seed(5)
    n = 20_000
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    targets = torch.zeros(n)
    targets[torch.randperm(n, generator=g)[:40]] = 1.0
    targets[torch.randperm(n, generator=g)[: n // 50]] = -1.0
    logits = torch.where(targets == 1, logits, logits - 8.0)
    monkeypatch.setattr("detlosses.ranking.engine._SPREAD_MIN_POINTS", 1)
    set_cpu_fast_paths(False)
    try:
        without = _all_four(logits, targets)
        monkeypatch.setattr("detlosses.ranking.engine._SPREAD_EDGES", 256)
        spread = _all_four(logits, targets)
    finally:
        set_cpu_fast_paths(True)
    _assert_same(spread, without, rtol=1e-9)
