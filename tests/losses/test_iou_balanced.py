"""IoU-balanced focal and smooth-L1 losses against the spec's formulas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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


def test_no_element_no_positive_and_a_zero_avg_factor_give_zero_not_nan():
    """mmdetection's conventions: the mean of nothing is 0 (its box losses' ``pred.sum() * 0``), and
    a zero ``avg_factor`` (every element ignored) divides by float32's epsilon, not by 0."""
    deltas = torch.zeros(0, 4, requires_grad=True)
    value = detlosses.iou_balanced_smooth_l1_loss(deltas, torch.zeros(0, 4), torch.zeros(0))  # no positive
    value.backward()
    assert value.item() == 0.0 and deltas.grad.shape == (0, 4)
    logits = torch.zeros(2, 0, 3, requires_grad=True)  # no anchor
    assert detlosses.iou_balanced_focal_loss(logits, torch.zeros(2, 0, 3), torch.zeros(2, 0, 3)).item() == 0.0
    logits, targets, ious = cls_batch(3)
    for zero in (0.0, torch.tensor(0.0)):
        ignored = detlosses.iou_balanced_focal_loss(logits, torch.full_like(targets, -1.0), ious, avg_factor=zero)
        assert ignored.item() == 0.0
        kept = detlosses.iou_balanced_focal_loss(logits, targets, ious, avg_factor=zero)
        eps = torch.finfo(torch.float32).eps
        summed = detlosses.iou_balanced_focal_loss(logits, targets, ious, reduction="sum")
        torch.testing.assert_close(kept, summed / eps)
    torch.testing.assert_close(detlosses.iou_balanced_focal_loss(logits, targets, ious, avg_factor=torch.tensor(7.0)),
                               detlosses.iou_balanced_focal_loss(logits, targets, ious, avg_factor=7.0))


def test_one_weight_per_anchor_or_box_applies_to_its_row():
    """mmdetection views an (N,) weight as (N, 1): with as many classes as anchors (3 x 3) a plain
    broadcast would have scaled the classes instead."""
    logits, targets, ious = cls_batch(6, n=3, c=3)
    targets[0, 0] = targets[1, 2] = 1.0
    per_anchor = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    for reduction in ("sum", "none"):
        got = detlosses.iou_balanced_focal_loss(logits, targets, ious, weight=per_anchor, reduction=reduction)
        want = detlosses.iou_balanced_focal_loss(logits, targets, ious, weight=per_anchor[:, None].expand(3, 3),
                                                 reduction=reduction)
        torch.testing.assert_close(got, want)
    deltas, target = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    box_ious = torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(
        detlosses.iou_balanced_smooth_l1_loss(deltas, target, box_ious, weight=per_anchor),
        detlosses.iou_balanced_smooth_l1_loss(deltas, target, box_ious, weight=per_anchor[:, None].expand(3, 4)))


def test_a_tensor_avg_factor_is_checked_in_the_losss_one_read(monkeypatch):
    from detlosses.losses import _validation

    reads = []
    judge = _validation._judge
    monkeypatch.setattr(_validation, "_judge", lambda *a, **k: reads.append(1) or judge(*a, **k))
    logits, targets, ious = cls_batch(4)
    detlosses.iou_balanced_focal_loss(logits, targets, ious, avg_factor=torch.tensor(5.0))
    detlosses.iou_balanced_smooth_l1_loss(torch.randn(6, 4), torch.randn(6, 4), torch.rand(6),
                                          avg_factor=torch.tensor(6.0))
    assert len(reads) == 2


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
        for passed in (clean, garbage):
            x = logits.clone().requires_grad_(True)
            value = detlosses.iou_balanced_focal_loss(x, targets, passed, reduction="sum")
            value.backward()
            values.append(value)
            grads.append(x.grad)
        torch.testing.assert_close(values[1], values[0])
        torch.testing.assert_close(grads[1], grads[0])


# ----------------------------------------------------------------- per-anchor class indices
def label_batch(seed=0, images=2, anchors=200, classes=4, background=0.6, ignored=0.1):
    """Logits, per-anchor labels (class, -1 background, -2 ignored) and the same targets per element."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(images, anchors, classes, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (images, anchors), generator=g)
    draw = torch.rand(images, anchors, generator=g)
    labels[draw < background + ignored] = -1
    labels[draw < ignored] = -2
    return logits, labels, per_element_targets(labels, classes)


def per_element_targets(labels, classes):
    """The per-element form of per-anchor labels: 1 at a positive's class, -1 on an ignored anchor."""
    targets = torch.nn.functional.one_hot(labels.clamp(min=0), classes).to(torch.float64)
    targets *= (labels >= 0).unsqueeze(-1)
    return torch.where((labels == -2).unsqueeze(-1), -1.0, targets)


def values_and_grads(logits, targets, ious, **options):
    x = logits.clone().requires_grad_(True)
    value = detlosses.iou_balanced_focal_loss(x, targets, ious, **options)
    value.sum().backward()
    return value, x.grad


@pytest.mark.parametrize("per_element_ious", [False, True])
@pytest.mark.parametrize("options", [{"reduction": "sum"}, {"reduction": "none"},
                                     {"reduction": "mean", "avg_factor": 7.0, "eta": 0.7, "alpha": 0.4,
                                      "gamma": 1.5}])
def test_per_anchor_class_indices_equal_the_per_element_targets(options, per_element_ious):
    logits, labels, targets = label_batch(1)
    g = torch.Generator().manual_seed(2)
    ious = torch.rand(logits.shape if per_element_ious else labels.shape, generator=g, dtype=torch.float64)
    by_anchor = values_and_grads(logits, labels, ious, **options)
    by_element = values_and_grads(logits, targets, ious, **options)
    torch.testing.assert_close(by_anchor, by_element)
    if options["reduction"] == "sum":  # and the float64 reference (ignored anchors dropped)
        kept = labels != -2
        xr = logits[kept].clone().requires_grad_(True)
        iou_rows = ious[kept] if per_element_ious else ious[kept][:, None].expand(-1, logits.shape[-1])
        reference.iou_balanced_focal(xr, targets[kept], iou_rows).backward()
        want = torch.zeros_like(logits)
        want[kept] = xr.grad
        torch.testing.assert_close(by_anchor[1], want)


@given(seed=st.integers(0, 2**16), classes=st.integers(1, 5), background=st.floats(0.0, 1.0),
       ignored=st.floats(0.0, 0.5), float32=st.booleans())
def test_per_anchor_class_indices_equal_the_per_element_targets_on_random_batches(seed, classes, background,
                                                                                  ignored, float32):
    """Any mix of positives, background and ignored anchors, none of one kind included (no positive:
    the negatives' plain focal loss), with an element weight."""
    logits, labels, targets = label_batch(seed, anchors=30, classes=classes, background=background,
                                          ignored=ignored)
    g = torch.Generator().manual_seed(seed + 1)
    ious = torch.rand(labels.shape, generator=g, dtype=torch.float64)
    weight = torch.rand(logits.shape, generator=g, dtype=torch.float64)
    if float32:
        logits, ious, weight = logits.float(), ious.float(), weight.float()
    by_anchor = values_and_grads(logits, labels, ious, reduction="sum", weight=weight)
    by_element = values_and_grads(logits, targets, ious, reduction="sum", weight=weight)
    torch.testing.assert_close(by_anchor, by_element)


def test_per_anchor_class_indices_read_the_ious_at_the_positives_only():
    logits, labels, _ = label_batch(3)
    g = torch.Generator().manual_seed(4)
    ious = torch.rand(labels.shape, generator=g, dtype=torch.float64)
    garbage = torch.where(labels >= 0, ious, torch.where(labels == -1, 7.0, float("nan")))
    torch.testing.assert_close(values_and_grads(logits, labels, garbage, reduction="sum"),
                               values_and_grads(logits, labels, ious, reduction="sum"))


@pytest.mark.parametrize("bad, message", [
    (lambda labels: labels.double(), "must be integer class indices"),
    (lambda labels: labels > 0, "must be integer class indices"),
    (lambda labels: torch.where(labels == 1, 4, labels), r"class index 4 outside \[0, 4\)"),
    (lambda labels: torch.where(labels == -2, -3, labels), "class index -3 outside"),
])
def test_per_anchor_class_indices_out_of_range_are_named(bad, message):
    logits, labels, _ = label_batch(5)
    with pytest.raises(ValueError, match=message):
        detlosses.iou_balanced_focal_loss(logits, bad(labels), torch.rand(labels.shape, dtype=torch.float64))


@pytest.mark.parametrize("bad", [1.5, float("nan")])
def test_per_element_targets_check_per_anchor_ious_at_the_anchors_with_a_positive(bad):
    """One IoU per anchor with per-element targets: checked at every anchor that holds a positive
    (an anchor with a positive in one class of several included)."""
    logits, labels, targets = label_batch(7)
    ious = torch.full(labels.shape, 0.5, dtype=torch.float64)
    anchor = tuple(int(i) for i in (labels >= 0).nonzero()[0])
    targets[anchor] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # one positive class of four
    ious[anchor] = bad
    with pytest.raises(ValueError, match="ious at the positives"):
        detlosses.iou_balanced_focal_loss(logits, targets, ious)


def test_per_anchor_class_indices_check_the_ious_at_the_positives():
    logits, labels, _ = label_batch(6)
    ious = torch.where(labels >= 0, 1.5, 0.5).double()
    with pytest.raises(ValueError, match=r"ious at the positives must lie in \[0, 1\], got 1.5"):
        detlosses.iou_balanced_focal_loss(logits, labels, ious)
    with pytest.raises(ValueError, match="ious must have shape"):
        detlosses.iou_balanced_focal_loss(logits, labels, ious[:, :5])
    detlosses.set_validate_args(False)
    try:  # the switch turns the value checks off (the shape checks stay)
        detlosses.iou_balanced_focal_loss(logits, labels, ious)
    finally:
        detlosses.set_validate_args(True)


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
