"""The set-prediction criteria (Deformable DETR) pinned against a dense float64 reference (issue 13).

The batch is hand-made: 2 decoder layers, 2 images of 5 queries, 3 classes; image 0 has 2 ground
truths, image 1 has 1; the matcher is a fixed assignment per layer (different in the two layers, as
Hungarian matching of each layer is independent). The reference is written from the documented
semantics (``docs/losses.md``, "Deformable DETR"; :mod:`detlosses.models.set_criteria`), not from
the criteria's code: it builds the query x class targets with loops over the matched pairs, computes
GIoU by hand from the normalised cx, cy, w, h boxes, evaluates Parameterized AP Loss densely
(``tests/losses/reference.py``, plain autograd), multiplies the gradient that reaches ``u`` by
``reg_weight`` and sums the layers. Values and gradients w.r.t. every layer's logits and boxes are
compared in float64.

Planted bugs, each applied alone to ``set_criteria.py`` / ``criteria.py``, made this module fail and
were reverted: the layers averaged instead of summed (``total / num_layers``); the soft IoU taken as
``1 - giou_loss`` instead of ``(GIoU + 1) / 2``; the matched class shifted (``labels[...] = class + 1``
modulo C); ``reg_weight`` not applied; the matched ground truth's box taken from the first ground
truth of the image (``gt_idx`` ignored).
"""

from __future__ import annotations

import pytest
import torch
from tests.losses import reference

from detlosses.losses.pap_params import resolve_params
from detlosses.models import supported_losses
from detlosses.models.set_criteria import SetPredictions, build_set_criterion

DT = torch.float64
C = 3
VALUE = dict(rtol=1e-10, atol=1e-12)
GRAD = dict(rtol=1e-9, atol=1e-12)

# per layer, per image: (query indices, ground-truth indices)
MATCHES = [
    [(torch.tensor([3, 0]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))],
    [(torch.tensor([1, 4]), torch.tensor([1, 0])), (torch.tensor([0]), torch.tensor([0]))],
]
TARGETS = [
    {"class_labels": torch.tensor([2, 0]),
     "boxes": torch.tensor([[0.30, 0.40, 0.20, 0.30], [0.70, 0.60, 0.25, 0.20]], dtype=DT)},
    {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.50, 0.50, 0.40, 0.35]], dtype=DT)},
]


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, 5, C, generator=g, dtype=DT)
    centres = 0.2 + 0.6 * torch.rand(2, 2, 5, 2, generator=g, dtype=DT)
    sizes = 0.1 + 0.3 * torch.rand(2, 2, 5, 2, generator=g, dtype=DT)
    return logits, torch.cat([centres, sizes], dim=-1)


def fixed_matcher(all_logits):
    def match(logits, boxes, targets):
        for layer in range(all_logits.shape[0]):
            if torch.equal(logits, all_logits[layer].detach()):
                return MATCHES[layer]
        raise AssertionError("unknown layer")
    return match


def giou(a, b):
    """GIoU of two cx, cy, w, h boxes, by hand (torchvision's eps = 1e-7 in the ratios)."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = torch.clamp(torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1), min=0)
    ih = torch.clamp(torch.minimum(ay2, by2) - torch.maximum(ay1, by1), min=0)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)) * (torch.maximum(ay2, by2) - torch.minimum(ay1, by1))
    return inter / (union + 1e-7) - (hull - union) / (hull + 1e-7)


def reference_pap(logits, boxes, form: str, control, reg_weight: float):
    """Per layer: dense PAP over every query x class; u = (GIoU + 1) / 2 of the matched box."""
    per_layer = []
    for layer in range(logits.shape[0]):
        targets = torch.zeros(2, 5, C, dtype=DT)
        ious = torch.zeros(2, 5, C, dtype=DT)
        for b in range(2):
            for q, j in zip(*MATCHES[layer][b], strict=True):
                cls = int(TARGETS[b]["class_labels"][j])
                targets[b, q, cls] = 1.0
                u = (giou(boxes[layer, b, q], TARGETS[b]["boxes"][j]) + 1) / 2
                u = u.detach() + reg_weight * (u - u.detach())  # the box branch's gradient times reg_weight
                ious = ious.index_put((torch.tensor(b), torch.tensor(int(q)), torch.tensor(cls)), u)
        per_layer.append(reference.parameterized_ap_loss(logits[layer], targets, ious, form, control))
    return per_layer


@pytest.mark.parametrize("options", [{}, {"params": "linear", "reg_weight": 2.0}])
def test_pap_on_queries_matches_dense_reference(options):
    for seed in (0, 1):
        logits, boxes = inputs(seed)
        ours_l, ours_b = logits.clone().requires_grad_(), boxes.clone().requires_grad_()
        ref_l, ref_b = logits.clone().requires_grad_(), boxes.clone().requires_grad_()
        criterion = build_set_criterion("pap", **options)
        out = criterion(SetPredictions(ours_l, ours_b, TARGETS, fixed_matcher(logits)))
        params = resolve_params(options.get("params", "retinanet"))
        control = None if params.control_points is None else params.control_points.tolist()
        layers = reference_pap(ref_l, ref_b, params.form, control, options.get("reg_weight", params.reg_weight))
        expected = layers[0] + layers[1]
        assert set(out) == {"loss", "loss_pap", "loss_aux"}
        torch.testing.assert_close(out["loss"].detach(), expected.detach(), **VALUE)
        torch.testing.assert_close(out["loss_pap"].detach(), layers[1].detach(), **VALUE)
        torch.testing.assert_close(out["loss_aux"].detach(), layers[0].detach(), **VALUE)
        ours = torch.autograd.grad(out["loss"], [ours_l, ours_b])
        theirs = torch.autograd.grad(expected, [ref_l, ref_b])
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, **GRAD)
        # unmatched queries' boxes get no gradient; every logit does (all are candidates)
        matched = torch.zeros(2, 2, 5, dtype=torch.bool)
        for layer in range(2):
            for b in range(2):
                matched[layer, b, MATCHES[layer][b][0]] = True
        assert float(ours[1][~matched].abs().sum()) == 0.0
        assert float(ours[1][matched].abs().sum()) > 0.0


def test_ap_on_queries_keeps_l1_and_giou_box_terms():
    """``ap``: AP-Loss on the query x class targets + 5 L1 + 2 GIoU per matched query / matched queries."""
    logits, boxes = inputs(2)
    out = build_set_criterion("ap")(SetPredictions(logits, boxes.clone().requires_grad_(), TARGETS,
                                                   fixed_matcher(logits)))
    layer = 1
    l1, gl = [], []
    for b in range(2):
        for q, j in zip(*MATCHES[layer][b], strict=True):
            l1.append((boxes[layer, b, q] - TARGETS[b]["boxes"][j]).abs().sum())
            gl.append(1 - giou(boxes[layer, b, q], TARGETS[b]["boxes"][j]))
    expected_box = 5 * torch.stack(l1).sum() / 3 + 2 * torch.stack(gl).sum() / 3
    torch.testing.assert_close(out["loss_box"].detach(), expected_box, **VALUE)


def test_loss_names_per_model_and_bad_names():
    assert supported_losses("deformable_detr") == ("set", "pap", "ap", "alrp", "rank_sort")
    assert "set" not in supported_losses("retinanet")
    with pytest.raises(ValueError, match="does not apply to set-prediction detectors"):
        build_set_criterion("focal")
    with pytest.raises(ValueError, match="bad options for loss 'pap'"):
        build_set_criterion("pap", bogus=1)
    with pytest.raises(ValueError, match="needs the model's own loss"):
        logits, boxes = inputs()
        build_set_criterion("set")(SetPredictions(logits, boxes, TARGETS, fixed_matcher(logits)))
