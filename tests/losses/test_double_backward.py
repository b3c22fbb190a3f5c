"""Second-order autograd (``create_graph=True``) through the ranking losses.

AP-Loss's, aLRP Loss's and Rank & Sort Loss's logit gradients are error-driven updates (Chen et al.
2019; Oksuz et al. 2020, 2021), not derivatives of their values: constants of the backward pass.
With ``create_graph=True`` they must stay differentiable, exactly, with respect to what scales them
(a learnt loss weight), and not depend on the logits (``allow_unused=True`` gives ``None``). aLRP's
localisation component is linear in its errors with detached ranks: the same holds for them.
Parameterized AP Loss's gradients are the derivatives of its value (Tao et al. 2021), written out;
differentiating them again would miss terms, so a second-order backward through it must raise.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import detlosses
from detlosses.losses import _graphs


def _batch(seed: int = 0, n: int = 2000, p: int = 25):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    targets = torch.zeros(n, dtype=torch.float64)
    targets[torch.randperm(n, generator=g)[:p]] = 1.0
    targets[torch.randperm(n, generator=g)[:40]] = -1.0  # some entries ignored (a few positives too)
    positives = int((targets == 1).sum())
    errors = torch.rand(positives, generator=g, dtype=torch.float64)
    ious = torch.rand(n, generator=g, dtype=torch.float64)
    iou_targets = torch.where(targets == 1, torch.rand(n, generator=g, dtype=torch.float64).clamp(min=0.05),
                              targets)
    return logits, targets, errors, ious, iou_targets


def _value(name: str, x, targets, extra, iou_targets):
    """The loss's components, each to be scaled by its own learnt weight."""
    if name == "ap":
        return [detlosses.ap_loss(x, targets)]
    if name == "alrp":
        return list(detlosses.alrp_loss(x, targets, extra))
    if name == "rank_sort":
        return list(detlosses.rank_sort_loss(x, iou_targets))
    return [detlosses.parameterized_ap_loss(x, targets, extra, params="retinanet")]


def _inputs(name, batch):
    logits, targets, errors, ious, iou_targets = batch
    x = logits.clone().requires_grad_(True)
    extra = {"alrp": errors, "pap": ious}.get(name)
    if extra is not None:
        extra = extra.clone().requires_grad_(True)
    return x, targets, extra, iou_targets


@pytest.mark.parametrize("static_shapes", [False, True], ids=["eager", "static-shapes"])
@pytest.mark.parametrize("name", ["ap", "alrp", "rank_sort"])
def test_gradient_penalty_through_learnt_weights(name, static_shapes):
    """``penalty = sum ||d(sum_c w_c L_c)/d input||^2`` built with ``create_graph=True``; its
    derivative in ``w`` is ``2 sum_{c'} w_{c'} <G_c, G_{c'}>`` with ``G_c`` the component's plain
    (first-order) gradients, and it does not depend on the logits."""
    batch = _batch()
    x, targets, extra, iou_targets = _inputs(name, batch)
    leaves = [x] + ([extra] if extra is not None else [])
    with (_graphs.force_static_shapes() if static_shapes else contextlib.nullcontext()):
        components = _value(name, x, targets, extra, iou_targets)
        # plain gradients of each component (first order)
        plain = [torch.autograd.grad(c, leaves, retain_graph=True, allow_unused=True) for c in components]
        weights = torch.linspace(0.7, 1.9, len(components), dtype=torch.float64).requires_grad_(True)
        total = sum(w * c for w, c in zip(weights, components, strict=True))
        grads = torch.autograd.grad(total, leaves, create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads)
    d_weights, d_logits = torch.autograd.grad(penalty, [weights, x], allow_unused=True)

    def flat(gs):
        return torch.cat([(torch.zeros_like(leaf) if g is None else g).reshape(-1)
                          for g, leaf in zip(gs, leaves, strict=True)])

    g = torch.stack([flat(gs) for gs in plain])  # (components, elements)
    expected = 2.0 * (g @ g.T) @ weights.detach()
    torch.testing.assert_close(d_weights, expected, rtol=1e-12, atol=1e-15)
    assert d_weights.abs().max() > 0  # (the gradients are not all zero)
    assert d_logits is None  # error-driven: the logits' gradient is a constant of the backward
    torch.testing.assert_close(flat(grads).detach(), weights.detach() @ g, rtol=1e-12, atol=1e-15)


def test_alrp_localisation_errors_second_derivative_is_zero():
    """``L_loc = sum_k e_k d_k`` with ``d`` detached (ranks detached, as released): the errors'
    gradient ``d`` is a constant, so there is no second derivative in the errors."""
    x, targets, extra, iou_targets = _inputs("alrp", _batch(seed=3))
    value = sum(_value("alrp", x, targets, extra, iou_targets))
    (g_extra,) = torch.autograd.grad(value, [extra], create_graph=True)
    assert g_extra.abs().max() > 0
    assert not g_extra.requires_grad  # a constant: nothing upstream of the value scales it here


@pytest.mark.parametrize("static_shapes", [False, True], ids=["eager", "static-shapes"])
def test_parameterized_ap_refuses_a_second_order_backward(static_shapes):
    """Its second derivatives are not zero (``I3(u_i)`` times ``1 - I2(u_j)`` couples the IoUs, and
    the logits' gradient depends on both): ``create_graph=True`` raises and names the loss, while
    the first-order backward is unchanged."""
    x, targets, extra, iou_targets = _inputs("pap", _batch(seed=4))
    with (_graphs.force_static_shapes() if static_shapes else contextlib.nullcontext()):
        (value,) = _value("pap", x, targets, extra, iou_targets)
        with pytest.raises(RuntimeError, match="parameterized_ap_loss: second-order gradients"):
            torch.autograd.grad(value, [x, extra], create_graph=True, retain_graph=True)
        first = torch.autograd.grad(value, [x, extra])
    assert all(g.abs().max() > 0 for g in first)
