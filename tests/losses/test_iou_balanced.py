"""IoU-balanced focal and smooth-L1 losses against the spec's formulas."""

from __future__ import annotations

import pytest
import torch

import detlosses

from . import reference


def cls_batch(seed=0, n=300, c=4):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    targets = (torch.rand(n, c, generator=g) < 0.1).to(torch.float64)
    ious = torch.rand(n, c, generator=g, dtype=torch.float64)
    return logits, targets, ious


def test_focal_matches_reference_and_gradients():
    logits, targets, ious = cls_batch()
    x = logits.clone().requires_grad_()
    loss = detlosses.iou_balanced_focal_loss(x, targets, ious, reduction="sum")
    loss.backward()
    xr = logits.clone().requires_grad_()
    ref = reference.iou_balanced_focal(xr, targets, ious)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, xr.grad)


def test_focal_keeps_the_total_positive_loss():
    from torchvision.ops import sigmoid_focal_loss

    logits, targets, ious = cls_batch(1)
    pos = targets == 1
    balanced = detlosses.iou_balanced_focal_loss(logits, targets, ious, reduction="none")
    plain = sigmoid_focal_loss(logits, targets, reduction="none")
    torch.testing.assert_close(balanced[pos].sum(), plain[pos].sum())
    torch.testing.assert_close(balanced[~pos], plain[~pos])
    # high-IoU positives weigh more than low-IoU ones
    ratio = balanced[pos] / plain[pos]
    order = torch.argsort(ious[pos])
    assert bool((ratio[order].diff() >= -1e-12).all())


def test_focal_per_anchor_ious_and_ignored_and_avg_factor():
    logits, targets, ious = cls_batch(2)
    per_anchor = ious[:, 0]
    full = per_anchor[:, None].expand_as(logits)
    a = detlosses.iou_balanced_focal_loss(logits, targets, per_anchor, reduction="sum")
    b = detlosses.iou_balanced_focal_loss(logits, targets, full, reduction="sum")
    torch.testing.assert_close(a, b)
    ignored = targets.clone()
    ignored[:10] = -1
    kept = detlosses.iou_balanced_focal_loss(logits[10:], targets[10:], ious[10:], reduction="sum")
    # ignored rows contribute nothing (normaliser computed on the same positives)
    torch.testing.assert_close(detlosses.iou_balanced_focal_loss(logits, ignored, ious, reduction="sum"), kept)
    module = detlosses.IoUBalancedFocalLoss(loss_weight=2.0, reduction="mean")
    torch.testing.assert_close(module(logits, targets, ious, avg_factor=7.0), 2.0 * a / 7.0)


def test_focal_reads_the_ious_at_the_positives_only():
    """IoUs elsewhere (NaN, out of range) change nothing: per anchor (the weight is computed on the
    anchors, then viewed at every element) and per element; gradients included."""
    logits, targets, ious = cls_batch(5)
    per_anchor = ious[:, 0]
    has_positive = (targets == 1).any(-1)
    garbage_anchor = torch.where(has_positive, per_anchor, float("nan"))
    garbage_full = torch.where(targets == 1, ious, torch.where(targets == 0, 7.0, float("nan")))
    for clean, garbage in ((per_anchor, garbage_anchor), (ious, garbage_full)):
        values, grads = [], []
        for given in (clean, garbage):
            x = logits.clone().requires_grad_(True)
            value = detlosses.iou_balanced_focal_loss(x, targets, given, reduction="sum")
            value.backward()
            values.append(value)
            grads.append(x.grad)
        torch.testing.assert_close(values[1], values[0])
        torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("normalize", [True, False])
def test_smooth_l1_matches_reference(normalize):
    g = torch.Generator().manual_seed(3)
    pred = 0.3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    target = 0.3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    ious = torch.rand(50, generator=g, dtype=torch.float64)
    x = pred.clone().requires_grad_()
    loss = detlosses.iou_balanced_smooth_l1_loss(x, target, ious, normalize=normalize, reduction="sum")
    loss.backward()
    xr = pred.clone().requires_grad_()
    ref = reference.iou_balanced_smooth_l1(xr, target, ious, normalize=normalize)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, xr.grad)
    if normalize:
        plain = torch.nn.functional.smooth_l1_loss(pred, target, beta=0.11, reduction="sum")
        torch.testing.assert_close(loss, plain)


def test_smooth_l1_gradcheck_without_normaliser():
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(8, 4, generator=g, dtype=torch.float64)
    ious = torch.rand(8, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: detlosses.iou_balanced_smooth_l1_loss(p, target, ious, normalize=False, reduction="sum"), (pred,)
    )
    module = detlosses.IoUBalancedSmoothL1Loss(loss_weight=3.0, normalize=False, reduction="sum")
    torch.testing.assert_close(
        module(pred, target, ious),
        3.0 * detlosses.iou_balanced_smooth_l1_loss(pred, target, ious, normalize=False, reduction="sum"),
    )
