"""AP-Loss against the dense float64 reference of the spec."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detlosses

from . import reference
from .strategies import DELTAS, ranking_batches


def run(logits, targets, **kwargs):
    x = logits.clone().requires_grad_(True)
    loss = detlosses.ap_loss(x, targets, **kwargs)
    loss.backward()
    return loss, x.grad


@given(batch=ranking_batches(), delta=st.sampled_from(DELTAS), interpolate=st.booleans())
def test_matches_dense_reference(batch, delta, interpolate):
    check_against_reference(batch, delta, interpolate)


def check_against_reference(batch, delta, interpolate):
    """Value and gradient against the dense float64 reference."""
    logits, targets, _ = batch
    loss, grad = run(logits, targets, delta=delta, interpolate=interpolate)
    ref_loss, ref_grad = reference.ap_loss(logits, targets, delta, interpolate)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("n, p, delta", [(100_000, 40, 1.0), (70_000, 300, 0.0), (60_000, 5, 0.5)])
def test_large_batches_use_the_grid_and_stay_exact(n, p, delta, monkeypatch):
    monkeypatch.setattr("detlosses.ranking.engine._GRID_MIN_POINTS", 32_768)
    g = torch.Generator().manual_seed(n)
    logits = -4.6 + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    logits = torch.round(logits * 64) / 64  # many exact ties and exact +-delta differences
    targets = torch.zeros(n, dtype=torch.long)
    targets[torch.randperm(n, generator=g)[:p]] = 1
    targets[torch.randperm(n, generator=g)[: n // 50]] = -1
    loss, grad = run(logits, targets, delta=delta)
    ref_loss, ref_grad = reference.ap_loss(logits, targets, delta)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-13)


def test_float32_inputs_are_accurate_to_float32():
    g = torch.Generator().manual_seed(3)
    logits = (-4.6 + 0.3 * torch.randn(200_000, generator=g)).float()
    targets = torch.zeros(200_000, dtype=torch.long)
    targets[torch.randperm(200_000, generator=g)[:500]] = 1
    loss, grad = run(logits, targets)
    ref_loss, ref_grad = reference.ap_loss(logits.double(), targets)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-7)
    scale = ref_grad.abs().max()
    assert float((grad.double() - ref_grad).abs().max() / scale) < 1e-5


def test_no_positive_gives_zero_loss_in_the_graph():
    logits = torch.randn(50, 3, requires_grad=True)
    targets = torch.zeros(50, 3, dtype=torch.long)
    targets[0] = -1
    loss = detlosses.ap_loss(logits, targets)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_single_positive_without_negatives_is_perfect():
    loss, grad = run(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), torch.tensor([1, -1, -1]))
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros(3, dtype=torch.float64))


def test_gradient_scales_with_upstream_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, generator=g, dtype=torch.float64)
    targets = (torch.rand(500, generator=g) < 0.1).long()
    x = logits.clone().requires_grad_(True)
    (3.0 * detlosses.ap_loss(x, targets)).backward()
    _, ref_grad = reference.ap_loss(logits, targets)
    torch.testing.assert_close(x.grad, 3.0 * ref_grad)


def test_module_applies_loss_weight_and_matches_functional():
    logits = torch.randn(200, 4, dtype=torch.float64)
    targets = (torch.rand(200, 4) < 0.05).long()
    module = detlosses.APLoss(delta=0.5, interpolate=False, loss_weight=2.0)
    expected = 2.0 * detlosses.ap_loss(logits, targets, delta=0.5, interpolate=False)
    torch.testing.assert_close(module(logits, targets), expected)
    assert "delta=0.5" in repr(module)
