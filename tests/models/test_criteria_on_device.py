"""The criteria keep their values on the device (issue 9): one host sync per batch of their own.

The ranking losses' own syncs are pinned in ``tests/benchmarks``; here every loss is replaced by a
sync-free stand-in, so what is counted is the criterion and the dense assignment alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detlosses.models import build_criterion
from detlosses.models import criteria as criteria_module
from detlosses.models.assignment import DenseAssignment, generalized_iou_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # ``benchmarks`` is a folder at the root
from benchmarks.launches import count_operators, criterion_call, fake_detection_batch  # noqa: E402


@pytest.fixture(scope="module")
def fake():
    return fake_detection_batch(images=2, anchors=2000, classes=3, positives=20)


def _assignment(fake) -> DenseAssignment:
    head = {k: v.clone().requires_grad_(True) for k, v in fake["head"].items()}
    return DenseAssignment.from_matches(fake["targets"], head, fake["anchors"], fake["matched"], fake["box_coder"])


# --------------------------------------------------------------------------- sync-free stand-ins
def _score(logits, targets):
    if targets.shape == logits.shape[:-1]:  # per-anchor class indices (the IoU-balanced criterion's)
        targets = targets.unsqueeze(-1)
    return (torch.sigmoid(logits.float()) * (targets >= 0)).sum() / logits.numel()


def _stub_ap(logits, targets, **_):
    return _score(logits, targets)


def _stub_rank_sort(logits, targets, **_):
    value = _score(logits, targets)
    return value, 0.5 * value


def _stub_alrp(logits, targets, loc_errors, **_):
    return _score(logits, targets), loc_errors.sum() / max(1, loc_errors.numel())


def _stub_pap(logits, targets, ious, **_):
    return _score(logits, targets) + ious.sum()


class _StubGHM(torch.nn.Module):
    bins = 30

    def forward(self, pred, target, weight=None, **_):
        self.last_counts = torch.zeros(self.bins, dtype=torch.float64, device=pred.device)
        if weight is not None and weight.dim() < pred.dim():  # one weight per row (GHM-C's per-anchor form)
            weight = weight[:, None]
        return ((pred.float() - target.float()) ** 2 * (weight if weight is not None else 1)).mean()


@pytest.fixture
def sync_free_losses(monkeypatch):
    monkeypatch.setattr(criteria_module, "ap_loss", _stub_ap)
    monkeypatch.setattr(criteria_module, "rank_sort_loss", _stub_rank_sort)
    monkeypatch.setattr(criteria_module, "iou_balanced_focal_loss",
                        lambda logits, targets, ious, **_: _score(logits, targets) + ious.sum())
    monkeypatch.setattr(criteria_module, "iou_balanced_smooth_l1_loss",
                        lambda pred, target, ious, **_: ((pred - target).abs() * ious[:, None]).sum())
    monkeypatch.setattr(sys.modules["detlosses.losses.alrp_loss"], "alrp_loss", _stub_alrp)
    monkeypatch.setattr(sys.modules["detlosses.losses.parameterized_ap_loss"], "parameterized_ap_loss", _stub_pap)
    original = criteria_module.build_criterion

    def build(name, **options):
        criterion = original(name, **options)
        if name == "ghm":
            criterion.ghmc, criterion.ghmr = _StubGHM(), _StubGHM()
        return criterion

    # criterion_call builds its criterion with detlosses.models.build_criterion
    monkeypatch.setattr(sys.modules["detlosses.models"], "build_criterion", build)


@pytest.mark.parametrize("name", criteria_module.LOSS_NAMES)
@pytest.mark.usefixtures("sync_free_losses")
def test_a_criterion_call_has_one_host_sync_of_its_own(name, fake):
    count = count_operators(criterion_call(name, fake), cuda=False)
    # the nonzero that enumerates the positives (their number sets every per-positive shape)
    assert count.sync_ops == {"aten::nonzero": 1}, count.sync_ops


# --------------------------------------------------------------------------- same values as before
def test_generalized_iou_loss_is_torchvision_s_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=g) * 50
    boxes1 = torch.cat([xy, xy + 1 + 20 * torch.rand(64, 2, generator=g)], 1)
    xy = torch.rand(64, 2, generator=g) * 50  # many pairs do not overlap
    boxes2 = torch.cat([xy, xy + 1 + 20 * torch.rand(64, 2, generator=g)], 1)
    boxes2[:8] = boxes1[:8]  # identical pairs
    for dtype in (torch.float32, torch.float64):
        a1, a2, b1, b2 = (t.to(dtype).clone().requires_grad_(True) for t in (boxes1, boxes2, boxes1, boxes2))
        ours, theirs = generalized_iou_loss(a1, a2), generalized_box_iou_loss(b1, b2, reduction="none")
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        weights = torch.rand(64, generator=g).to(dtype)
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(a1.grad, b1.grad, rtol=0, atol=0)
        torch.testing.assert_close(a2.grad, b2.grad, rtol=0, atol=0)
    assert generalized_iou_loss(boxes1.half(), boxes2.half()).dtype == torch.float32


def test_focal_criterion_equals_the_boolean_indexed_sum(fake):
    batch = _assignment(fake)
    valid = batch.valid_mask
    targets = batch.class_targets(batch.cls_logits.dtype)
    expected = sigmoid_focal_loss(batch.cls_logits[valid], targets[valid], reduction="sum") / batch.num_positives
    out = build_criterion("focal")(batch)
    torch.testing.assert_close(out["loss_cls"], expected, rtol=1e-6, atol=0)
    assert targets.min() == -1  # some anchors are ignored


def test_rank_sort_self_balance_stays_a_tensor(fake):
    criterion = build_criterion("rank_sort")
    assert criterion.extra_logs() == {}
    out = criterion(_assignment(fake))
    weight = criterion.extra_logs()["sb_weight"]
    assert isinstance(weight, torch.Tensor) and weight.dtype == torch.float64 and weight > 0
    # lambda = (L_rank + L_sort) / L_box, so the balanced box loss equals the ranking losses
    torch.testing.assert_close(out["loss_box"], out["loss_rank"] + out["loss_sort"], rtol=1e-6, atol=0)


def test_alrp_logs_its_self_balance_buffer():
    criterion = build_criterion("alrp")
    weight = criterion.extra_logs()["sb_weight"]
    assert isinstance(weight, torch.Tensor) and float(weight) == 50.0


def test_ghm_histogram_counts_the_valid_elements(fake):
    criterion = build_criterion("ghm").train()
    batch = _assignment(fake)
    criterion(batch)
    logits = batch.cls_logits.detach().reshape(-1, batch.num_classes)
    targets = batch.class_targets().reshape(-1, batch.num_classes)
    g = (torch.sigmoid(logits) - targets.clamp(min=0)).abs()[targets >= 0]
    # GHM-C's own bins (the released edges: last one 1 + 1e-6), the counts it weighted by
    edges = torch.arange(31, dtype=torch.float32) / 30
    edges[-1] += 1e-6
    expected = torch.bincount(torch.bucketize(g, edges, right=True) - 1, minlength=30).double()
    assert torch.equal(criterion.histogram, expected)


def test_from_matches_labels_and_boxes(fake):
    batch = _assignment(fake)
    for b, matched in enumerate(fake["matched"]):
        labels, boxes = batch.labels[b], batch.matched_boxes[b]
        assert torch.equal(labels[matched == -1], torch.full_like(labels[matched == -1], -1))
        assert torch.equal(labels[matched == -2], torch.full_like(labels[matched == -2], -2))
        positive = matched >= 0
        assert torch.equal(labels[positive], fake["targets"][b]["labels"][matched[positive]])
        assert torch.equal(boxes[positive], fake["targets"][b]["boxes"][matched[positive]])
        assert not boxes[~positive].any()


# --------------------------------------------------------------------------- the training module
def test_training_module_reads_finiteness_once_per_logging_interval(monkeypatch):
    from detlosses.training.config import TrainConfig
    from detlosses.training.module import DetectionModule

    module = DetectionModule(TrainConfig(image_size=64, fpn_channels=32).to_dict(), ["a", "b", "c"])
    monkeypatch.setattr(module, "_log_interval", lambda: 3)
    finite = {"loss": torch.tensor(1.5), "loss_cls": torch.tensor(1.0), "loss_box": torch.tensor(0.5)}
    broken = {"loss": torch.tensor(float("nan")), "loss_cls": torch.tensor(1.0), "loss_box": torch.tensor(float("nan"))}

    def watch(losses):
        return count_operators(lambda: module._watch_finite(losses), warmup=False, cuda=False)

    assert watch(finite).syncs == 0  # step 1 of 3: nothing read
    assert watch(broken).syncs == 0  # step 2: the NaN is only remembered, on the device
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at step 0 .*'loss_cls': 1\.0"):
        module._watch_finite(finite)  # step 3: the interval's one read finds it
    module._nonfinite_step = None
    for _ in range(4):
        module._watch_finite(finite)
    module._check_finite()  # all finite: no error
