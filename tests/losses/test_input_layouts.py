"""The layouts a detector hands the losses: permuted (non-contiguous) head outputs, and calls
without autograd (validation under ``torch.inference_mode``). Same values and gradients as
contiguous inputs, and no warning from inside the library."""

from __future__ import annotations

import warnings

import pytest
import torch

import detlosses

NAMES = ("ap", "alrp", "rank_sort", "pap", "ghm_c", "iou_balanced_focal")


def _loss(name, logits, targets, ious):
    if name == "ap":
        return detlosses.ap_loss(logits, targets)
    if name == "alrp":
        return sum(detlosses.alrp_loss(logits, targets, 1.0 - ious[targets == 1]))
    if name == "rank_sort":
        return sum(detlosses.rank_sort_loss(logits, torch.where(targets > 0, ious.clamp(min=0.05), targets)))
    if name == "pap":
        return detlosses.parameterized_ap_loss(logits, targets, ious)
    if name == "ghm_c":
        return detlosses.ghmc_loss(logits, targets.clamp(min=0), (targets >= 0).to(logits.dtype))
    return detlosses.iou_balanced_focal_loss(logits, targets, ious)


def _head_outputs(seed=0, batch=2, classes=4, height=30, width=40):
    """A conv head's ``(B, C, H, W)`` logits seen as ``(B, H, W, C)``: a permuted view, and
    targets and IoUs laid out the same way."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(batch, classes, height, width, generator=g)
    targets = (torch.rand(batch, classes, height, width, generator=g) < 0.03).float()
    targets[0, :, :2] = -1.0
    ious = torch.rand(batch, classes, height, width, generator=g)
    return raw, targets.permute(0, 2, 3, 1), ious.permute(0, 2, 3, 1)


@pytest.mark.parametrize("name", NAMES)
def test_permuted_inputs_equal_contiguous_ones(name):
    raw, targets, ious = _head_outputs()
    assert not targets.is_contiguous()
    x = raw.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = _loss(name, x.permute(0, 2, 3, 1), targets, ious)
        value.backward()
    y = raw.clone().requires_grad_()
    want = _loss(name, y.permute(0, 2, 3, 1).contiguous(), targets.contiguous(), ious.contiguous())
    want.backward()
    torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_values_without_autograd(mode):
    """Validation computes the losses without autograd: the same values, nothing to backpropagate."""
    raw, targets, ious = _head_outputs(seed=1)
    logits = raw.permute(0, 2, 3, 1).contiguous()
    want = {name: _loss(name, logits, targets, ious) for name in NAMES}
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        got = {name: _loss(name, logits, targets, ious) for name in NAMES}
    for name in NAMES:
        assert not got[name].requires_grad, name
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
