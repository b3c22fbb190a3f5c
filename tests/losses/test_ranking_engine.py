"""The exact window engine: bucketing at the boundaries, sums and adjoints against dense ones."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detlosses.ranking import SortedWindows, control_point_kernel, smoothed_step, square_kernel
from detlosses.ranking.kernels import PiecewisePolynomialKernel

KERNELS = {
    "step": smoothed_step(0.0),
    "smoothed": smoothed_step(0.5),
    "control": control_point_kernel([0, 0.3, 0.3, 0.5, 0.9, 1], [0, 0.1, 0.4, 0.4, 0.95, 1]),
    "square": square_kernel(),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("closed_right", [False, True])
def test_grid_bucketing_equals_binary_search_at_every_boundary(dtype, closed_right):
    g = torch.Generator().manual_seed(0)
    queries = torch.round(torch.randn(300, generator=g) * 8).to(dtype) / 8
    windows = SortedWindows(queries, (-0.5, 0.0, 0.5), closed_right)
    edges = windows.edges
    near = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])
    points = torch.cat([near, torch.randn(100_003, generator=g).to(dtype) * 3, edges.new_tensor([-1e30, 1e30])])
    points = points[torch.randperm(points.numel(), generator=g)]
    assert points.numel() > 32_768  # exercises the grid
    expected = torch.searchsorted(edges, points, right=closed_right)
    torch.testing.assert_close(windows.bucketize(points), expected, rtol=0, atol=0)


@given(
    kernel=st.sampled_from(sorted(KERNELS)),
    p=st.integers(1, 40),
    n=st.integers(0, 300),
    seed=st.integers(0, 10_000),
    tied=st.booleans(),
)
def test_sums_and_adjoint_match_dense(kernel, p, n, seed, tied):
    k = KERNELS[kernel]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p, generator=g, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    if tied:
        q, x = torch.round(q * 4) / 4, torch.round(x * 4) / 4
    w = torch.rand(n, generator=g, dtype=torch.float64)
    c = torch.randn(p, generator=g, dtype=torch.float64)
    windows = SortedWindows.for_kernel(q, k)
    points = windows.points(windows.bucketize(x), x)
    dense = k(x[None, :] - q[:, None])  # (P, N)
    (sums,) = windows.query_sums(points, [k], weights=w)
    torch.testing.assert_close(sums, dense @ w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(windows.point_sums(points, k, c), dense.T @ c, rtol=1e-10, atol=1e-10)


def test_refined_and_mirrored_kernels_are_the_same_functions():
    d = torch.linspace(-2, 2, 4001, dtype=torch.float64)
    for k in KERNELS.values():
        fine = k.refined(sorted(set(k.breakpoints) | {-0.7, 0.1, 0.33}))
        torch.testing.assert_close(fine(d), k(d))
        if not k.right_closed_at:
            torch.testing.assert_close(k.mirrored()(-d), k(d))
    with pytest.raises(ValueError, match="must include the kernel's own"):
        smoothed_step(1.0).refined([0.0])


def test_kernel_validation():
    with pytest.raises(ValueError, match="non-decreasing"):
        PiecewisePolynomialKernel((1.0, 0.0), ((0, 0, 0), (0, 0, 0), (0, 0, 0)))
    with pytest.raises(ValueError, match="constant below its first"):
        PiecewisePolynomialKernel((0.0,), ((0, 1, 0), (0, 0, 0)))
