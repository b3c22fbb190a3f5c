"""Rank & Sort Loss against the dense reference (both components, separate gradients)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detlosses
from detlosses.ranking import dominance_adjoint, dominance_sums, smoothed_step

from . import reference
from .strategies import DELTAS, ranking_batches


def run(logits, targets, **kwargs):
    x = logits.clone().requires_grad_(True)
    ranking, sorting = detlosses.rank_sort_loss(x, targets, **kwargs)
    (grad_r,) = torch.autograd.grad(ranking, x, retain_graph=True)
    (grad_s,) = torch.autograd.grad(sorting, x)
    return ranking, sorting, grad_r, grad_s


@given(batch=ranking_batches(continuous=True), delta=st.sampled_from(DELTAS))
def test_matches_dense_reference(batch, delta):
    check_against_reference(batch, delta)


def check_against_reference(batch, delta):
    """Both components and their gradients against the dense float64 reference."""
    logits, targets, _ = batch
    ranking, sorting, grad_r, grad_s = run(logits, targets, delta=delta)
    ref = reference.rank_sort_loss(logits, targets, delta)
    torch.testing.assert_close(ranking, ref[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sorting, ref[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_r, ref[2], rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(grad_s, ref[3], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("p", [30, 700])  # dense pairs below 384 positives, merge-sort tree above
def test_large_batch(p):
    n = 50_000
    g = torch.Generator().manual_seed(p)
    logits = torch.round((-4.6 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)) * 32) / 32
    targets = torch.zeros(n, dtype=torch.float64)
    idx = torch.randperm(n, generator=g)[:p]
    targets[idx] = torch.ceil(torch.rand(p, generator=g, dtype=torch.float64) * 8) / 8
    ranking, sorting, grad_r, grad_s = run(logits, targets)
    ref = reference.rank_sort_loss(logits, targets)
    torch.testing.assert_close(ranking, ref[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sorting, ref[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_r, ref[2], rtol=1e-7, atol=1e-13)
    torch.testing.assert_close(grad_s, ref[3], rtol=1e-7, atol=1e-13)


@given(
    p=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    delta=st.sampled_from(DELTAS),
    tie_scores=st.booleans(),
    tie_keys=st.booleans(),
    blocks=st.booleans(),
)
def test_dominance_sums_match_an_explicit_double_loop(p, seed, delta, tie_scores, tie_keys, blocks):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(p, generator=g, dtype=torch.float64)
    if tie_scores:
        s = torch.round(s * 4) / 4
    y = torch.rand(p, generator=g, dtype=torch.float64)
    if tie_keys:
        y = torch.round(y * 3) / 3
    w = torch.rand(p, 2, generator=g, dtype=torch.float64)
    c = torch.randn(p, generator=g, dtype=torch.float64)
    kernel = smoothed_step(delta)
    expected_ge = torch.zeros(p, 2, dtype=torch.float64)
    expected_adjoint = torch.zeros(p, dtype=torch.float64)
    for i in range(p):
        for k in range(p):
            h = float(kernel(s[k:k + 1] - s[i:i + 1]))
            if y[k] >= y[i]:
                expected_ge[i] += w[k] * h
            else:
                expected_adjoint[k] += c[i] * h
    with pytest.MonkeyPatch.context() as patch:
        if blocks:  # several row blocks instead of one P x P matrix
            patch.setattr("detlosses.ranking.dominance._BLOCK_ELEMENTS", 3 * p)
        torch.testing.assert_close(dominance_sums(s, y, kernel, w), expected_ge, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dominance_adjoint(s, y, kernel, c), expected_adjoint, rtol=1e-12, atol=1e-12)


def test_module_returns_components():
    logits = torch.randn(100, dtype=torch.float64)
    iou = torch.rand(100, dtype=torch.float64)
    targets = torch.where(torch.rand(100) < 0.1, iou, torch.zeros(100, dtype=torch.float64))
    module = detlosses.RankSortLoss(loss_weight=0.5)
    loss = module(logits, targets)
    ranking, sorting = module.last_components
    torch.testing.assert_close(loss, 0.5 * (ranking + sorting))
    torch.testing.assert_close(tuple(module.last_components), tuple(detlosses.rank_sort_loss(logits, targets)))


def test_no_positive():
    x = torch.randn(10, requires_grad=True)
    r, s = detlosses.rank_sort_loss(x, torch.zeros(10))
    assert r.item() == 0 and s.item() == 0
    (r + s).backward()
    assert torch.equal(x.grad, torch.zeros(10))


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("into_buffer", [False, True])
def test_pairwise_kernel_matches_the_elementwise_one(delta, into_buffer):
    """Rank & Sort's pairs use ``pairwise`` (one subtraction and a clamp for the smoothed step):
    the same values as the kernel of the differences, ties and differences at +-delta included."""
    g = torch.Generator().manual_seed(7)
    scores = torch.round(torch.randn(300, generator=g, dtype=torch.float64) * 4) / 4
    queries = scores[:120]
    kernel = smoothed_step(delta)
    out = torch.full((120, 300), float("nan"), dtype=torch.float64) if into_buffer else None
    got = kernel.pairwise(queries, scores, out=out)
    torch.testing.assert_close(got, kernel(scores[None, :] - queries[:, None]), rtol=0, atol=1e-15)
    if into_buffer:
        assert got.data_ptr() == out.data_ptr()
