"""The dense predictions of one batch together with their training targets.

A one-stage head predicts, for every image ``b``, anchor (or location) ``a`` and class ``c``, a
logit, and for every anchor four box-regression values. The detector's matcher assigns each
anchor a ground-truth box (positive), the background (negative) or neither (ignored: IoU in
``[0.4, 0.5)`` for RetinaNet). :class:`DenseAssignment` holds all of that for the *whole batch*,
so the ranking losses rank every anchor of every image and every FPN level at once, and offers
the inputs each loss needs: ternary or IoU class targets, decoded boxes of the positives, box
deltas, IoUs.

Positives are always enumerated in ``(image, anchor)`` order, which is the order in which they
appear in ``class_targets().flatten()`` (one class per positive anchor).

Everything here stays on the device: the only host synchronisation per batch is the ``nonzero``
that enumerates the positives (:attr:`DenseAssignment.positive_index`; their number sets the
shapes of every per-positive tensor). Masks are applied with ``masked_fill``/``torch.where``,
never by boolean indexing (which syncs on CUDA, forward and backward), and the GIoU loss is
:func:`generalized_iou_loss`, torchvision's formula without its boolean indexing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from ..losses._validation import BACKGROUND_LABEL, IGNORED_LABEL

__all__ = ["DenseAssignment", "BACKGROUND", "IGNORED", "aligned_iou", "generalized_iou_loss", "shift_labels"]

BACKGROUND = BACKGROUND_LABEL  # -1 (torchvision's matcher: below the low threshold)
IGNORED = IGNORED_LABEL  # -2 (between the thresholds)
HEADS = ("retinanet", "fcos")


def shift_labels(records: list[dict[str, Tensor]] | None, by: int) -> list[dict[str, Tensor]] | None:
    """Targets or detections with ``labels + by`` (e.g. ``+1`` into a softmax head whose class 0 is the
    background, ``-1`` back out of it); ``None`` stays ``None``."""
    if records is None:
        return None
    return [{**r, "labels": r["labels"] + by} for r in records]


def aligned_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding XYXY boxes (``boxes1[i]`` with ``boxes2[i]``)."""
    if boxes1.numel() == 0:
        return boxes1.new_zeros(boxes1.shape[:-1])
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def generalized_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` of corresponding XYXY boxes, elementwise (no reduction).

    The formula, operations and order of ``torchvision.ops.generalized_box_iou_loss`` (same values
    and gradients), with the intersection masked by ``torch.where`` instead of boolean indexing,
    so that it issues no host synchronisation (torchvision's costs five ``nonzero`` forward and
    five backward on CUDA).
    """
    if boxes1.dtype not in (torch.float32, torch.float64):
        boxes1 = boxes1.float()
    if boxes2.dtype not in (torch.float32, torch.float64):
        boxes2 = boxes2.float()
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk = torch.where(overlap, (xkis2 - xkis1) * (ykis2 - ykis1), 0.0)
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    miouk = iouk - ((area_c - unionk) / (area_c + eps))
    return 1 - miouk


@dataclass
class DenseAssignment:
    """Dense predictions and targets of a batch.

    Attributes:
        cls_logits: ``(B, A, C)`` classification logits.
        box_regression: ``(B, A, 4)`` raw box-regression outputs.
        anchors: ``(B, A, 4)`` anchors (RetinaNet) or location boxes (FCOS), XYXY.
        labels: ``(B, A)`` int64: class index of a positive, ``BACKGROUND`` or ``IGNORED``.
        matched_boxes: ``(B, A, 4)`` ground-truth box of each positive (zeros elsewhere).
        box_coder: torchvision's ``BoxCoder`` (RetinaNet) or ``BoxLinearCoder`` (FCOS), as ``head`` says.
        extras: head-specific outputs, e.g. ``"bbox_ctrness"`` ``(B, A, 1)`` for FCOS.
        head: ``"retinanet"`` (anchors, deltas of ``BoxCoder``) or ``"fcos"`` (locations,
            ``BoxLinearCoder`` distances, a centerness branch).
    """

    cls_logits: Tensor
    box_regression: Tensor
    anchors: Tensor
    labels: Tensor
    matched_boxes: Tensor
    box_coder: object
    extras: dict[str, Tensor] = field(default_factory=dict)
    head: str = "retinanet"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")

    @classmethod
    def from_matches(
        cls,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
        box_coder: object,
        head: str = "retinanet",
    ) -> DenseAssignment:
        """Build from torchvision's head outputs and per-image matcher results.

        ``matched_idxs[b][a]`` is the matched ground-truth index, ``-1`` (background) or ``-2``
        (between the thresholds: ignored).
        """
        labels, boxes = [], []
        for target, matched in zip(targets, matched_idxs, strict=True):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            safe = matched.clamp(min=0)
            if gt_labels.numel():
                lab = gt_labels[safe]
                box = gt_boxes[safe]
            else:
                lab = torch.zeros_like(matched)
                box = matched.new_zeros((matched.numel(), 4), dtype=head_outputs["bbox_regression"].dtype)
            lab = lab.masked_fill(matched == -1, BACKGROUND).masked_fill(matched == -2, IGNORED)
            box = box.masked_fill((matched < 0).unsqueeze(-1), 0.0)
            labels.append(lab)
            boxes.append(box)
        extras = {k: v for k, v in head_outputs.items() if k not in ("cls_logits", "bbox_regression")}
        return cls(
            cls_logits=head_outputs["cls_logits"],
            box_regression=head_outputs["bbox_regression"],
            anchors=torch.stack(anchors),
            labels=torch.stack(labels),
            matched_boxes=torch.stack(boxes).to(head_outputs["bbox_regression"].dtype),
            box_coder=box_coder,
            extras=extras,
            head=head,
        )

    # ------------------------------------------------------------------ masks and counts
    @property
    def num_classes(self) -> int:
        return self.cls_logits.shape[-1]

    @cached_property
    def positive_mask(self) -> Tensor:
        return self.labels >= 0

    @cached_property
    def valid_mask(self) -> Tensor:
        """Anchors that are positive or negative (not ignored)."""
        return self.labels != IGNORED

    @cached_property
    def positive_index(self) -> Tensor:
        """Flat ``b * A + a`` indices of the positives, ascending (the batch's one host sync)."""
        return self.positive_mask.reshape(-1).nonzero().squeeze(1)

    @property
    def num_positives(self) -> int:
        """This batch's number of positives (a host integer: the size of :attr:`positive_index`)."""
        return int(self.positive_index.numel())

    def positive_count(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """:attr:`num_positives` as a 0-dim tensor on the logits' device (a fill, no copy or sync)."""
        return torch.full((), self.num_positives, dtype=dtype, device=self.cls_logits.device)

    @cached_property
    def positive_labels(self) -> Tensor:
        return self.labels.reshape(-1)[self.positive_index]

    # ------------------------------------------------------------------ classification targets
    def class_targets(self, dtype: torch.dtype = torch.float32, positive_values: Tensor | None = None,
                      ignored: float = -1.0) -> Tensor:
        """``(B, A, C)``: 1 at a positive's class (``positive_values[k]`` at positive ``k``'s, e.g.
        its IoU for Rank & Sort Loss), 0 elsewhere, ``ignored`` on every class of an ignored anchor
        (``0``: no pass for them, for a loss that masks them by a weight, :meth:`valid_weight`)."""
        out = torch.zeros(self.cls_logits.shape, dtype=dtype, device=self.cls_logits.device)
        flat = out.view(-1, self.num_classes)
        flat[self.positive_index, self.positive_labels] = 1.0 if positive_values is None else positive_values.to(dtype)
        if ignored != 0.0:
            flat.masked_fill_((self.labels.reshape(-1) == IGNORED).unsqueeze(1), ignored)
        return out

    def valid_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B * A,)``: 1 for an anchor that is positive or negative, 0 for an ignored one (one weight
        per anchor: a loss broadcasts it over the classes)."""
        return self.valid_mask.reshape(-1).to(dtype)

    # ------------------------------------------------------------------ boxes of the positives
    def _positive_rows(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(-1, tensor.shape[-1])[self.positive_index]

    @property
    def positive_anchors(self) -> Tensor:
        return self._positive_rows(self.anchors)

    @property
    def positive_gt_boxes(self) -> Tensor:
        return self._positive_rows(self.matched_boxes)

    @property
    def positive_deltas(self) -> Tensor:
        """Predicted box deltas of the positives (differentiable)."""
        return self._positive_rows(self.box_regression)

    def positive_target_deltas(self) -> Tensor:
        """The deltas that would reproduce each positive's ground-truth box from its anchor."""
        anchors = self.positive_anchors
        gt = self.positive_gt_boxes
        if self.head == "retinanet":  # BoxCoder
            return self.box_coder.encode_single(gt, anchors)
        return self.box_coder.encode(anchors, gt)  # BoxLinearCoder (FCOS)

    def positive_pred_boxes(self) -> Tensor:
        """Decoded predicted boxes of the positives, float32 or wider (differentiable).

        The coder is the one :attr:`head` names (as in :meth:`positive_target_deltas`): torchvision's
        ``BoxCoder.decode_single`` for ``"retinanet"``, ``BoxLinearCoder.decode`` for ``"fcos"``.
        """
        deltas = self.positive_deltas
        deltas = deltas.to(torch.promote_types(deltas.dtype, torch.float32))
        anchors = self.positive_anchors.to(deltas.dtype)
        if self.head == "retinanet":  # BoxCoder
            return self.box_coder.decode_single(deltas, anchors)
        return self.box_coder.decode(deltas, anchors)  # BoxLinearCoder (FCOS)

    def positive_giou_loss(self, pred_boxes: Tensor | None = None) -> Tensor:
        """``1 - GIoU`` of each positive's predicted box with its ground truth, in ``[0, 2]``."""
        pred = self.positive_pred_boxes() if pred_boxes is None else pred_boxes
        if pred.numel() == 0:
            return pred.new_zeros(0)
        return generalized_iou_loss(pred, self.positive_gt_boxes.to(pred.dtype))

    def positive_ious(self, pred_boxes: Tensor | None = None) -> Tensor:
        """IoU of each positive's (detached) predicted box with its ground truth."""
        pred = (self.positive_pred_boxes() if pred_boxes is None else pred_boxes).detach()
        return aligned_iou(pred, self.positive_gt_boxes.to(pred.dtype))

    def anchor_ious(self) -> Tensor:
        """``(B, A)`` IoU of each anchor's predicted box with its ground truth (0 off the positives)."""
        out = torch.zeros(self.labels.shape, dtype=torch.float32, device=self.labels.device)
        out.view(-1)[self.positive_index] = self.positive_ious().float()
        return out

