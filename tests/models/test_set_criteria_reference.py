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

``ap``, ``alrp`` and ``rank_sort`` (issue 10) are pinned the same way, with the dense references of
``tests/losses/reference.py`` (AP-Loss, aLRP, Rank & Sort: the spec's value and identity-update
gradient, turned into a tensor with exactly that gradient) on the query x class targets built by
hand: ``ap`` with its classification term and the L1 + GIoU box terms; ``alrp`` with
``e = 1 - GIoU`` of the matched queries (localisation gradient to the boxes through ``e``), the
self-balance weight at its initial value, then ``(sum L_loc + sum L_cls) / sum L_loc`` over every
layer's call after an epoch end; ``rank_sort`` with the matched queries' IoU as targets, the box term
weighted by each matched query's max score and its per-layer self-balance ``(L_rank + L_sort) /
L_box`` (logged weight: the last layer's). For ``alrp`` and ``rank_sort`` every matched query's box is
a perturbation of its ground truth's (IoU targets all positive). Planted bugs, each alone, made these
tests fail (brackets) and were reverted: ``interpolate`` not passed to ``ap_loss`` [ap, options];
``initial_weight`` not passed by ``SetALRPCriterion`` [alrp, options]; ``delta`` not passed by
``SetRankSortCriterion`` [rank_sort, options]; the query boxes left in cx, cy, w, h (no conversion to
XYXY) [every criterion]; aLRP's errors detached (no localisation gradient) [alrp]; Rank & Sort's box
weights replaced by ones [rank_sort]; the matched class shifted [ap, alrp, rank_sort, pap]; the
epoch end not forwarded to the dense criterion (aLRP's weight never updated) [alrp].
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


def _corners_and_overlap(a, b):
    """The corners of two cx, cy, w, h boxes and their intersection's area, by hand."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = torch.clamp(torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1), min=0)
    ih = torch.clamp(torch.minimum(ay2, by2) - torch.maximum(ay1, by1), min=0)
    return (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), iw * ih


def giou(a, b):
    """GIoU of two cx, cy, w, h boxes, by hand (torchvision's eps = 1e-7 in the ratios)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), inter = _corners_and_overlap(a, b)
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


# --------------------------------------------------------------------------- ap, alrp, rank_sort
def near_inputs(seed: int):
    """As :func:`inputs`, with every matched query's box a small perturbation of its ground truth's
    (every matched IoU clearly positive, so Rank & Sort's IoU targets are all positives)."""
    logits, boxes = inputs(seed)
    g = torch.Generator().manual_seed(100 + seed)
    for layer in range(2):
        for b in range(2):
            for q, j in zip(*MATCHES[layer][b], strict=True):
                gt = TARGETS[b]["boxes"][j]
                boxes[layer, b, q] = gt + torch.cat([0.03 * torch.randn(2, generator=g, dtype=DT),
                                                     gt[2:] * 0.15 * torch.randn(2, generator=g, dtype=DT)])
    return logits, boxes


def plain_iou(a, b):
    """IoU of two cx, cy, w, h boxes, by hand (no eps: the IoU targets and aligned IoU)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2), inter = _corners_and_overlap(a, b)
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def positives(layer: int):
    """The matched pairs of ``layer`` in ``(image, query)`` order (the flattened order of their
    query x class entries): ``(b, q, gt index, class)``."""
    pairs = []
    for b in range(2):
        for q, j in zip(*MATCHES[layer][b], strict=True):
            pairs.append((b, int(q), int(j), int(TARGETS[b]["class_labels"][j])))
    return sorted(pairs)


def query_targets(layer: int, values=None):
    """``(2, 5, C)`` query x class targets: 1 (or ``values[k]``) at positive ``k``'s class, else 0."""
    targets = torch.zeros(2, 5, C, dtype=DT)
    for k, (b, q, _, cls) in enumerate(positives(layer)):
        targets[b, q, cls] = 1.0 if values is None else values[k]
    return targets


def with_grad(value, tensor, grad):
    """A scalar equal to ``value`` whose gradient w.r.t. ``tensor`` is ``grad`` (the spec's identity update)."""
    linear = (tensor * grad).sum()
    return value.detach() + linear - linear.detach()


def reference_ap(logits, boxes, delta=1.0, interpolate=True, bbox_weight=5.0, giou_weight=2.0):
    """Per layer: {loss, loss_cls, loss_box}: AP-Loss on the query x class targets (value and the spec's
    gradient) + (bbox_weight L1 + giou_weight (1 - GIoU)) summed over the matched queries / their number."""
    per_layer = []
    for layer in range(logits.shape[0]):
        value, grad = reference.ap_loss(logits[layer].detach(), query_targets(layer), delta, interpolate)
        cls = with_grad(value, logits[layer], grad)
        pairs = positives(layer)
        l1 = sum((boxes[layer, b, q] - TARGETS[b]["boxes"][j]).abs().sum() for b, q, j, _ in pairs)
        gl = sum(1 - giou(boxes[layer, b, q], TARGETS[b]["boxes"][j]) for b, q, j, _ in pairs)
        box = bbox_weight * l1 / len(pairs) + giou_weight * gl / len(pairs)
        per_layer.append({"loss": cls + box, "loss_cls": cls, "loss_box": box})
    return per_layer


def reference_alrp(logits, boxes, weight, delta=1.0):
    """Per layer: {loss, loss_cls, loss_loc} of aLRP with ``e = 1 - GIoU`` of the matched queries and
    the self-balance weight ``weight``: cls by the spec's identity update (errors constant), loc's
    gradient to the boxes through ``e``."""
    per_layer = []
    for layer in range(logits.shape[0]):
        errors = torch.stack([1 - giou(boxes[layer, b, q], TARGETS[b]["boxes"][j])
                              for b, q, j, _ in positives(layer)])
        cls_value, loc_value, grad, loc_grad = reference.alrp_loss(logits[layer].detach(), query_targets(layer),
                                                                   errors.detach(), delta)
        cls = with_grad(cls_value, logits[layer], grad)
        loc = with_grad(loc_value, errors, loc_grad)
        per_layer.append({"loss": cls + weight * loc, "loss_cls": cls, "loss_loc": loc})
    return per_layer


def reference_rank_sort(logits, boxes, delta=0.5):
    """Per layer: {loss, loss_rank, loss_sort, loss_box} and the self-balance weight: Rank & Sort with
    the matched queries' IoU (detached) as targets, box term ``sum_k w_k (1 - GIoU_k) / sum_k w_k`` with
    ``w_k`` the matched query's max sigmoid score (detached), times ``(L_rank + L_sort) / L_box``."""
    per_layer, weights = [], []
    for layer in range(logits.shape[0]):
        pairs = positives(layer)
        ious = [float(plain_iou(boxes[layer, b, q].detach(), TARGETS[b]["boxes"][j])) for b, q, j, _ in pairs]
        assert all(v > 0.2 for v in ious)
        ranking, sorting, grad_r, grad_s = reference.rank_sort_loss(logits[layer].detach(),
                                                                    query_targets(layer, ious), delta)
        rank_term = with_grad(ranking, logits[layer], grad_r)
        sort_term = with_grad(sorting, logits[layer], grad_s)
        w = [float(torch.sigmoid(logits[layer, b, q].detach()).max()) for b, q, _, _ in pairs]
        box = sum(wk * (1 - giou(boxes[layer, b, q], TARGETS[b]["boxes"][j]))
                  for wk, (b, q, j, _) in zip(w, pairs, strict=True)) / sum(w)
        balance = float(ranking + sorting) / float(box.detach())
        weights.append(balance)
        per_layer.append({"loss": rank_term + sort_term + balance * box, "loss_rank": rank_term,
                          "loss_sort": sort_term, "loss_box": balance * box})
    return per_layer, weights


def assert_layers(out, layers, ours, theirs):
    """``out``: the criterion's {loss, last layer's components, loss_aux}; ``layers``: per-layer references."""
    expected = {**{k: v for k, v in layers[1].items() if k != "loss"},
                "loss": layers[0]["loss"] + layers[1]["loss"], "loss_aux": layers[0]["loss"]}
    assert set(out) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(out[key].detach(), value.detach(), **VALUE, msg=lambda m, k=key: f"{k}: {m}")
    for a, b in zip(torch.autograd.grad(out["loss"], ours), torch.autograd.grad(expected["loss"], theirs),
                    strict=True):
        torch.testing.assert_close(a, b, **GRAD)


def leaves(logits, boxes):
    return logits.clone().requires_grad_(), boxes.clone().requires_grad_()


@pytest.mark.parametrize("options", [{}, {"delta": 0.5, "interpolate": False, "bbox_weight": 3.0,
                                          "giou_weight": 1.5}])
def test_ap_on_queries_matches_dense_reference(options):
    """``ap``: AP-Loss (classification, value and gradient) + the L1 and GIoU box terms, per layer, summed."""
    criterion = build_set_criterion("ap", **options)
    for seed in (0, 1):
        logits, boxes = inputs(seed)
        ours, theirs = leaves(logits, boxes), leaves(logits, boxes)
        out = criterion(SetPredictions(*ours, TARGETS, fixed_matcher(logits)))
        assert_layers(out, reference_ap(*theirs, **options), ours, theirs)


@pytest.mark.parametrize("options", [{}, {"delta": 0.7, "initial_weight": 10.0}])
def test_alrp_on_queries_matches_dense_reference(options):
    """``alrp``: aLRP with ``e = 1 - GIoU`` of the matched queries, the self-balance weight at its initial
    value (one weight for every layer), and after an epoch end ``(sum L_loc + sum L_cls) / sum L_loc`` over
    every layer's call."""
    criterion = build_set_criterion("alrp", **options)
    weight = options.get("initial_weight", 50.0)
    delta = options.get("delta", 1.0)
    sums = [0.0, 0.0]
    for step, seed in enumerate((0, 1)):
        logits, boxes = near_inputs(seed)
        ours, theirs = leaves(logits, boxes), leaves(logits, boxes)
        out = criterion(SetPredictions(*ours, TARGETS, fixed_matcher(logits)))
        layers = reference_alrp(*theirs, weight, delta)
        assert_layers(out, layers, ours, theirs)
        assert float(criterion.extra_logs()["sb_weight"]) == pytest.approx(weight, rel=1e-12)
        for layer in layers:
            sums[0] += float(layer["loss_cls"].detach())
            sums[1] += float(layer["loss_loc"].detach())
        if step == 0:  # the first step uses the initial weight; then the epoch ends
            weight = (sums[1] + sums[0]) / sums[1]
            assert criterion.epoch_end()["sb_weight"] == pytest.approx(weight, rel=1e-10)


@pytest.mark.parametrize("options", [{}, {"delta": 0.3}])
def test_rank_sort_on_queries_matches_dense_reference(options):
    """``rank_sort``: Rank & Sort with IoU targets, the score-weighted GIoU box term and its per-layer
    self-balance weight (logged: the last layer's)."""
    criterion = build_set_criterion("rank_sort", **options)
    for seed in (0, 1):
        logits, boxes = near_inputs(seed)
        ours, theirs = leaves(logits, boxes), leaves(logits, boxes)
        out = criterion(SetPredictions(*ours, TARGETS, fixed_matcher(logits)))
        layers, weights = reference_rank_sort(*theirs, options.get("delta", 0.5))
        assert_layers(out, layers, ours, theirs)
        torch.testing.assert_close(criterion.extra_logs()["sb_weight"].to(DT), torch.tensor(weights[1], dtype=DT),
                                   **VALUE)


def test_queries_decode_to_their_own_boxes_without_a_box_coder():
    """A query's predicted box is its own (XYXY) box and its regression target the matched ground truth:
    :class:`QueryAssignment` says so (``head="detr"``, no box coder), no duck-typed coder."""
    import inspect

    from detlosses.models import assignment as assignment_module
    from detlosses.models.set_criteria import QueryAssignment, box_cxcywh_to_xyxy

    logits, boxes = inputs(0)
    batch = QueryAssignment.from_set_matches(logits[0], boxes[0], TARGETS, MATCHES[0])
    assert batch.head == "detr" and batch.box_coder is None
    rows = [b * 5 + q for b, q, _, _ in positives(0)]
    torch.testing.assert_close(batch.positive_pred_boxes(), box_cxcywh_to_xyxy(boxes[0].reshape(-1, 4)[rows]))
    gts = torch.stack([TARGETS[b]["boxes"][j] for b, _, j, _ in positives(0)])
    torch.testing.assert_close(batch.positive_target_deltas(), box_cxcywh_to_xyxy(gts))
    assert "hasattr" not in inspect.getsource(assignment_module)
    with pytest.raises(ValueError, match="head is 'detr'"):
        QueryAssignment(logits[0], boxes[0], boxes[0], torch.zeros(2, 5, dtype=torch.long), boxes[0], None,
                        head="fcos")
