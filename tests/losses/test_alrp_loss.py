"""aLRP Loss: components and gradients against the dense reference; the self-balance weight."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detlosses

from . import reference
from .strategies import DELTAS, ranking_batches


def run(logits, targets, errors, **kwargs):
    x = logits.clone().requires_grad_(True)
    e = errors.clone().requires_grad_(True)
    cls, loc = detlosses.alrp_loss(x, targets, e, **kwargs)
    torch.autograd.backward([cls, loc])
    return cls, loc, x.grad, e.grad


def errors_for(targets, seed=0):
    p = int((targets == 1).sum())
    return torch.rand(p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


@given(batch=ranking_batches(), delta=st.sampled_from(DELTAS))
def test_matches_dense_reference(batch, delta):
    check_against_reference(batch, delta)


def check_against_reference(batch, delta):
    """Both components and every gradient against the dense float64 reference."""
    logits, targets, case = batch
    errors = errors_for(targets)
    cls, loc, grad, e_grad = run(logits, targets, errors, delta=delta)
    ref_cls, ref_loc, ref_grad, ref_e_grad = reference.alrp_loss(logits, targets, errors, delta)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loc, ref_loc, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)
    if case != "no_positives" and errors.numel():
        torch.testing.assert_close(e_grad, ref_e_grad, rtol=1e-9, atol=1e-12)


def test_large_batch_exact_and_balanced():
    n, p = 120_000, 80
    g = torch.Generator().manual_seed(1)
    logits = torch.round((-4.6 + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)) * 32) / 32
    targets = torch.zeros(n, dtype=torch.long)
    targets[torch.randperm(n, generator=g)[:p]] = 1
    errors = errors_for(targets, 1)
    cls, loc, grad, _ = run(logits, targets, errors)
    ref_cls, ref_loc, ref_grad, _ = reference.alrp_loss(logits, targets, errors)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loc, ref_loc, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-13)
    # balance theorem: positives and negatives receive equal total magnitude
    pos = targets == 1
    torch.testing.assert_close(grad[pos].abs().sum(), grad[~pos].abs().sum(), rtol=1e-9, atol=0)


def test_localisation_gradient_flows_only_through_errors():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 0, 1, 0])
    errors = torch.tensor([0.5, 0.25], dtype=torch.float64, requires_grad=True)
    _, loc = detlosses.alrp_loss(logits, targets, errors)
    loc.backward()
    assert logits.grad is None or torch.equal(logits.grad, torch.zeros_like(logits))
    assert errors.grad is not None and bool((errors.grad > 0).all())


def test_no_positive():
    x = torch.randn(20, requires_grad=True)
    cls, loc = detlosses.alrp_loss(x, torch.zeros(20), torch.zeros(0))
    assert cls.item() == 0.0 and loc.item() == 0.0 and cls.requires_grad
    (cls + loc).backward()
    assert torch.equal(x.grad, torch.zeros(20))


def test_loc_errors_length_must_match_positives():
    with pytest.raises(ValueError, match="loc_errors has 1 entries but targets has 2 positives"):
        detlosses.alrp_loss(torch.randn(4), torch.tensor([1, 1, 0, 0]), torch.rand(1))


class TestSelfBalance:
    def make(self):
        g = torch.Generator().manual_seed(5)
        logits = torch.randn(300, 2, generator=g, dtype=torch.float64)
        targets = (torch.rand(300, 2, generator=g) < 0.05).long()
        errors = torch.rand(int(targets.sum()), generator=g, dtype=torch.float64)
        return logits, targets, errors

    def test_weight_starts_at_50_and_combines_components(self):
        module = detlosses.ALRPLoss()
        logits, targets, errors = self.make()
        loss = module(logits, targets, errors)
        assert module.weight == 50.0
        cls, loc = module.last_components
        torch.testing.assert_close(loss, cls + 50.0 * loc)

    def test_end_epoch_uses_the_epoch_means(self):
        module = detlosses.ALRPLoss()
        values = []
        for seed in range(3):
            logits, targets, errors = self.make()
            logits = logits + seed
            module(logits, targets, errors * (seed + 1))
            values.append(tuple(v.item() for v in module.last_components))
        mean_cls = sum(v[0] for v in values) / 3
        mean_loc = sum(v[1] for v in values) / 3
        new = module.end_epoch()
        assert new == pytest.approx((mean_loc + mean_cls) / mean_loc, rel=1e-12)
        assert module.weight == pytest.approx(new)
        # a new epoch starts empty: ending it without iterations keeps the weight
        assert module.end_epoch() == pytest.approx(new)

    def test_eval_mode_does_not_record(self):
        module = detlosses.ALRPLoss().eval()
        module(*self.make())
        assert module.end_epoch() == 50.0

    def test_state_dict_round_trip(self):
        module = detlosses.ALRPLoss()
        module(*self.make())
        module.end_epoch()
        module(*self.make())  # mid-epoch sums are saved too
        restored = detlosses.ALRPLoss()
        restored.load_state_dict(module.state_dict())
        assert restored.weight == module.weight
        assert restored.end_epoch() == pytest.approx(module.end_epoch())
