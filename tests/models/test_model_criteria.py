"""Detectors with every criterion: dense assignment, loss components, gradients, state."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from detlosses.models import (
    BACKGROUND,
    IGNORED,
    LOSS_NAMES,
    DenseAssignment,
    DetectorConfig,
    build_criterion,
    build_detector,
)

EXPECTED_COMPONENTS = {
    "focal": {"loss_cls", "loss_box"},
    "ap": {"loss_cls", "loss_box"},
    "alrp": {"loss_cls", "loss_loc"},
    "rank_sort": {"loss_rank", "loss_sort", "loss_box"},
    "pap": {"loss_pap"},
    "ghm": {"loss_cls", "loss_box"},
    "iou_balanced": {"loss_cls", "loss_box"},
}


def tiny_batch(seed=0, size=64, images=2):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(3, size, size, generator=g) for _ in range(images)]
    targets = []
    for i in range(images):
        n = 2 + i
        xy = torch.rand(n, 2, generator=g) * size * 0.6
        wh = 8 + torch.rand(n, 2, generator=g) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, 3, (n,), generator=g)})
    targets[-1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}  # a pure negative
    return imgs, targets


@pytest.mark.parametrize("model", ["retinanet", "fcos"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_trains_every_detector(model, loss):
    torch.manual_seed(0)
    detector = build_detector(
        DetectorConfig(model=model, num_classes=3, image_size=64, fpn_channels=32), build_criterion(loss)
    )
    detector.train()
    images, targets = tiny_batch()
    losses = detector(images, targets)
    expected = EXPECTED_COMPONENTS[loss] | ({"loss_ctrness"} if model == "fcos" else set())
    assert set(losses) == {"loss"} | expected
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    head_grads = [p.grad for p in detector.head.parameters() if p.requires_grad]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in head_grads)


def test_dense_assignment_targets_and_order():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    anchors = [torch.tensor([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 20, 20.0]])] * 2
    head = {"cls_logits": torch.zeros(2, 3, 2), "bbox_regression": torch.zeros(2, 3, 4)}
    targets = [
        {"boxes": torch.tensor([[0, 0, 10, 10.0], [10, 10, 20, 20]]), "labels": torch.tensor([1, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    matched = [torch.tensor([0, 1, -2]), torch.tensor([-1, -1, -1])]
    batch = DenseAssignment.from_matches(targets, head, anchors, matched, coder)
    assert batch.labels.tolist() == [[1, 0, IGNORED], [BACKGROUND] * 3]
    assert batch.positive_index.tolist() == [0, 1] and batch.num_positives == 2
    expected = torch.tensor([[[0, 1], [1, 0], [-1, -1]], [[0, 0], [0, 0], [0, 0]]], dtype=torch.float32)
    assert torch.equal(batch.class_targets(), expected)
    # per-positive values (Rank & Sort's IoU targets) at the positives' classes, in their order
    with_values = torch.tensor([[[0, 0.25], [0.75, 0], [-1, -1]], [[0, 0], [0, 0], [0, 0]]], dtype=torch.float64)
    assert torch.equal(batch.class_targets(torch.float64, positive_values=torch.tensor([0.25, 0.75])), with_values)
    # binary targets with the ignored anchor's classes at 0, and the per-anchor weight that masks it
    assert torch.equal(batch.class_targets(ignored=0.0), expected.clamp(min=0))
    assert batch.valid_weight().tolist() == [1, 1, 0, 1, 1, 1]
    # anchors equal to their boxes: zero target deltas, IoU 1 with zero regression
    assert torch.allclose(batch.positive_target_deltas(), torch.zeros(2, 4), atol=1e-6)
    assert torch.allclose(batch.positive_ious(), torch.ones(2))
    assert torch.allclose(batch.positive_giou_loss(), torch.zeros(2), atol=1e-6)
    # positives appear in class_targets().flatten() in the same order
    flat = batch.class_targets().flatten()
    assert (flat == 1).nonzero().squeeze(1).tolist() == [1, 2]


def test_alrp_self_balance_lives_in_the_model_state():
    criterion = build_criterion("alrp")
    detector = build_detector(DetectorConfig(num_classes=3, image_size=64, fpn_channels=32), criterion)
    detector.train()
    images, targets = tiny_batch()
    detector(images, targets)
    new_weight = criterion.epoch_end()["sb_weight"]
    assert new_weight != 50.0
    state = detector.state_dict()
    key = next(k for k in state if k.endswith("self_balance.weight"))
    assert float(state[key]) == pytest.approx(new_weight)


def test_pap_reg_weight_scales_only_the_box_branch():
    images, targets = tiny_batch(1)
    grads = {}
    for reg_weight in (1.0, 3.0):
        torch.manual_seed(0)
        detector = build_detector(DetectorConfig(num_classes=3, image_size=64, fpn_channels=32),
                                  build_criterion("pap", reg_weight=reg_weight))
        detector.train()
        detector(images, targets)["loss"].backward()
        grads[reg_weight] = (detector.head.regression_head.bbox_reg.weight.grad.clone(),
                             detector.head.classification_head.cls_logits.weight.grad.clone())
    torch.testing.assert_close(grads[3.0][0], 3.0 * grads[1.0][0], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(grads[3.0][1], grads[1.0][1], rtol=1e-4, atol=1e-9)


def test_ghm_records_gradient_norm_histogram():
    criterion = build_criterion("ghm")
    detector = build_detector(DetectorConfig(num_classes=3, image_size=64, fpn_channels=32), criterion)
    detector.train()
    detector(*tiny_batch())
    criterion.epoch_end()
    assert len(criterion.last_histogram) == 30 and sum(criterion.last_histogram) > 0
    assert len(criterion.histogram_edges()) == 31


def test_unknown_loss_and_bad_options():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        build_criterion("nope")
    with pytest.raises(ValueError, match="bad options for loss 'alrp'"):
        build_criterion("alrp", colour="red")
    with pytest.raises(ValueError, match="box_loss must be"):
        build_criterion("focal", box_loss="l2")
    with pytest.raises(ValueError, match="box_loss must be 'ghmr'"):
        build_criterion("ghm", box_loss="smooth_l1")
    with pytest.raises(ValueError, match="unknown backbone"):
        DetectorConfig(backbone="vgg16")
