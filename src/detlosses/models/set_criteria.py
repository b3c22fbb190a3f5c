"""Loss choices of set-prediction detectors (Deformable DETR), by name.

A set-prediction detector outputs, for every decoder layer ``l``, image ``b`` and query ``q``, one
logit per class (sigmoid, no background class) and one box (normalised ``cx, cy, w, h``). A
Hungarian matcher assigns every ground-truth box to one query of each layer (a one-to-one
matching, independently for every layer, as in DETR's auxiliary losses). A criterion here turns
the outputs of every layer (:class:`SetPredictions`) into ``{"loss": total, <components>...}``.

======================  ===================================================================
name                    what replaces the model's set loss
======================  ===================================================================
``set``                 nothing: the model's own loss (Hungarian matching, sigmoid focal
                        classification, L1 + GIoU boxes, auxiliary loss of every layer)
``pap``                 Parameterized AP Loss over every query x class of the batch, per
                        decoder layer; boxes trained only through the soft IoU ``u``
``ap``                  AP-Loss in place of the focal term; the L1 + GIoU box terms kept
``alrp``                aLRP Loss with ``e = 1 - GIoU`` of the matched queries (no L1)
``rank_sort``           Rank & Sort Loss with IoU targets + score-weighted GIoU, self-balanced
======================  ===================================================================

Every ranking criterion: the matched query of a ground truth is a positive at that ground
truth's class (target 1), every other (query, class) entry of the batch is a negative (0);
nothing is ignored. One ranking per decoder layer (each layer's outputs are a detection set of
their own; only the last one is evaluated), the layers' losses summed with weight 1, as the set
loss sums its auxiliary terms. Each layer's ranking is the dense criterion of
:mod:`detlosses.models.criteria` applied to a :class:`QueryAssignment` (one "anchor" per query,
the predicted box its own decoded box), so the whole batch, and under data parallelism every
rank's batch, is ranked at once (``distributed=True``).

This module is torch-only: the matcher and the model's own set loss come from the model
(:mod:`detlosses.models.deformable_detr`, which needs ``transformers``) as callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import ap_loss
from .assignment import BACKGROUND, DenseAssignment, generalized_iou_loss
from .criteria import (
    ALRPCriterion,
    DetectionCriterion,
    PAPCriterion,
    RankSortCriterion,
    _positive_mean,
    _ternary_targets,
)

__all__ = [
    "SET_LOSS_NAMES",
    "SET_MODELS",
    "QueryAssignment",
    "SetCriterion",
    "SetPredictions",
    "box_cxcywh_to_xyxy",
    "build_set_criterion",
]

SET_MODELS = ("deformable_detr",)
"""Detectors trained with the criteria of this module (the others take :mod:`.criteria`)."""

Matches = list[tuple[Tensor, Tensor]]
"""Per image: ``(query indices, ground-truth indices)`` of the matched pairs."""


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


@dataclass
class SetPredictions:
    """Every decoder layer's outputs for one batch, with the ground truth and the model's matcher.

    Attributes:
        logits: ``(L, B, Q, C)`` class logits of every decoder layer (the last is the output).
        boxes: ``(L, B, Q, 4)`` predicted boxes, normalised ``cx, cy, w, h`` in ``[0, 1]``.
        targets: per image ``{"class_labels": (n,) int64, "boxes": (n, 4)}`` (normalised cxcywh).
        matcher: ``matcher(logits (B, Q, C), boxes (B, Q, 4), targets) -> Matches``, the model's
            Hungarian matcher (no gradient).
        model_loss: computes the model's own set loss, ``() -> (total, {name: value})``.
    """

    logits: Tensor
    boxes: Tensor
    targets: list[dict[str, Tensor]]
    matcher: Callable[[Tensor, Tensor, list[dict[str, Tensor]]], Matches]
    model_loss: Callable[[], tuple[Tensor, dict[str, Tensor]]] | None = None
    _matches: dict[int, Matches] = field(default_factory=dict, repr=False)

    @property
    def num_layers(self) -> int:
        return self.logits.shape[0]

    def matches(self, layer: int) -> Matches:
        """The matcher's assignment for ``layer`` (computed once)."""
        if layer not in self._matches:
            self._matches[layer] = self.matcher(self.logits[layer], self.boxes[layer], self.targets)
        return self._matches[layer]

    def assignment(self, layer: int) -> QueryAssignment:
        """``layer``'s outputs as a dense batch: one "anchor" per query, matched queries positive."""
        return QueryAssignment.from_set_matches(self.logits[layer], self.boxes[layer], self.targets,
                                                self.matches(layer))


@dataclass
class QueryAssignment(DenseAssignment):
    """A :class:`DenseAssignment` of set predictions: anchors are the queries, boxes XYXY normalised.

    ``box_regression`` holds each query's predicted box (XYXY, normalised; differentiable), so there
    is no box coder (``box_coder=None``): the positives' predicted boxes are their rows of
    ``box_regression`` and their regression targets the matched ground-truth boxes themselves
    (:meth:`positive_pred_boxes` and :meth:`positive_target_deltas` say so, for ``head="detr"``).
    ``labels`` is the matched ground truth's class (``BACKGROUND`` for an unmatched query), nothing
    is ignored.
    """

    head: str = "detr"

    def __post_init__(self) -> None:  # the dense head names do not apply
        if self.head != "detr":
            raise ValueError(f"a QueryAssignment's head is 'detr', got {self.head!r}")

    def positive_pred_boxes(self) -> Tensor:
        """The positives' predicted boxes (XYXY, normalised), float32 or wider (differentiable)."""
        boxes = self.positive_deltas
        return boxes.to(torch.promote_types(boxes.dtype, torch.float32))

    def positive_target_deltas(self) -> Tensor:
        """The queries regress boxes directly: the target is the matched ground-truth box."""
        return self.positive_gt_boxes

    @classmethod
    def from_set_matches(cls, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]],
                         matches: Matches) -> QueryAssignment:
        batch, queries = logits.shape[:2]
        labels = torch.full((batch, queries), BACKGROUND, dtype=torch.int64, device=logits.device)
        matched = torch.zeros((batch, queries, 4), dtype=boxes.dtype, device=boxes.device)
        for b, ((query_idx, gt_idx), target) in enumerate(zip(matches, targets, strict=True)):
            query_idx = query_idx.to(logits.device)
            gt_idx = gt_idx.to(logits.device)
            labels[b, query_idx] = target["class_labels"].to(logits.device)[gt_idx]
            matched[b, query_idx] = box_cxcywh_to_xyxy(target["boxes"].to(boxes)[gt_idx])
        return cls(cls_logits=logits, box_regression=box_cxcywh_to_xyxy(boxes),
                   anchors=torch.zeros_like(boxes), labels=labels, matched_boxes=matched,
                   box_coder=None, head="detr")

    def positive_l1(self) -> Tensor:
        """L1 distance of each positive's predicted box to its ground truth, in normalised cxcywh."""
        def cxcywh(xyxy: Tensor) -> Tensor:
            return torch.cat(((xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]), dim=-1)
        pred = self.positive_pred_boxes()
        return F.l1_loss(cxcywh(pred), cxcywh(self.positive_gt_boxes.to(pred.dtype)), reduction="none").sum(-1)


class SetCriterion(DetectionCriterion):
    """Base class: ``forward(predictions: SetPredictions) -> {"loss": ..., components}``."""


class ModelSetLoss(SetCriterion):
    """The model's own set loss (Hungarian matching, focal + L1 + GIoU, auxiliary losses)."""

    name = "set"

    def forward(self, predictions: SetPredictions) -> dict[str, Tensor]:
        if predictions.model_loss is None:
            raise ValueError("the 'set' loss needs the model's own loss (SetPredictions.model_loss)")
        total, parts = predictions.model_loss()
        out = {"loss": total}
        for key in ("loss_ce", "loss_bbox", "loss_giou"):
            if key in parts:
                out[key] = parts[key]
        return out


class _PerLayer(SetCriterion):
    """Sums one dense criterion over the decoder layers; logs the last layer's components and the
    auxiliary layers' total."""

    def __init__(self, dense: DetectionCriterion) -> None:
        super().__init__()
        self.dense = dense

    def layer_loss(self, batch: QueryAssignment) -> dict[str, Tensor]:
        return self.dense(batch)

    def forward(self, predictions: SetPredictions) -> dict[str, Tensor]:
        last = predictions.num_layers - 1
        total, aux, out = None, None, {}
        for layer in range(predictions.num_layers):
            parts = self.layer_loss(predictions.assignment(layer))
            total = parts["loss"] if total is None else total + parts["loss"]
            if layer == last:
                out = {k: v for k, v in parts.items() if k != "loss"}
            else:
                aux = parts["loss"] if aux is None else aux + parts["loss"]
        out = {"loss": total, **out}
        if aux is not None:
            out["loss_aux"] = aux
        return out

    def epoch_end(self) -> dict[str, float]:
        return self.dense.epoch_end()

    def extra_logs(self) -> dict[str, Tensor | float]:
        return self.dense.extra_logs()


class SetPAPCriterion(_PerLayer):
    """Parameterized AP Loss on the matched queries: ``u = (GIoU + 1) / 2`` of the matched box,
    every query x class of the batch ranked, per decoder layer; replaces classification and boxes."""

    name = "pap"

    def __init__(self, params: Any = "retinanet", reg_weight: float | None = None, topk: int | None = None,
                 params_file: str | None = None) -> None:
        super().__init__(PAPCriterion(params=params, reg_weight=reg_weight, topk=topk, params_file=params_file))


class SetAPCriterion(_PerLayer):
    """AP-Loss in place of the focal term; the set loss's L1 and GIoU box terms (weights ``bbox_weight``,
    ``giou_weight``, normalised by the batch's matched queries) kept, per decoder layer."""

    name = "ap"

    def __init__(self, delta: float = 1.0, interpolate: bool = True, bbox_weight: float = 5.0,
                 giou_weight: float = 2.0) -> None:
        super().__init__(nn.Identity())
        self.delta, self.interpolate = float(delta), bool(interpolate)
        self.bbox_weight, self.giou_weight = float(bbox_weight), float(giou_weight)

    def layer_loss(self, batch: QueryAssignment) -> dict[str, Tensor]:
        cls = ap_loss(batch.cls_logits, _ternary_targets(batch), delta=self.delta, interpolate=self.interpolate,
                      distributed=True)
        pred = batch.positive_pred_boxes()
        l1 = _positive_mean(batch.positive_l1().sum(), batch)
        giou = _positive_mean(generalized_iou_loss(pred, batch.positive_gt_boxes.to(pred.dtype)).sum(), batch)
        box = self.bbox_weight * l1 + self.giou_weight * giou
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}

    def epoch_end(self) -> dict[str, float]:
        return {}

    def extra_logs(self) -> dict[str, Tensor | float]:
        return {}


class SetALRPCriterion(_PerLayer):
    """aLRP Loss on the matched queries (``e = 1 - GIoU``), one self-balance weight for every layer."""

    name = "alrp"

    def __init__(self, delta: float = 1.0, initial_weight: float = 50.0) -> None:
        super().__init__(ALRPCriterion(delta=delta, initial_weight=initial_weight))


class SetRankSortCriterion(_PerLayer):
    """Rank & Sort Loss on the matched queries (IoU targets) + score-weighted GIoU, self-balanced per layer."""

    name = "rank_sort"

    def __init__(self, delta: float = 0.5) -> None:
        super().__init__(RankSortCriterion(delta=delta))


SET_CRITERIA: dict[str, type[SetCriterion]] = {
    cls.name: cls for cls in (ModelSetLoss, SetPAPCriterion, SetAPCriterion, SetALRPCriterion, SetRankSortCriterion)
}
SET_LOSS_NAMES = tuple(SET_CRITERIA)


def build_set_criterion(name: str, **options: Any) -> SetCriterion:
    """A set-prediction criterion by name (see the module table); ``options`` go to its constructor."""
    if name not in SET_CRITERIA:
        raise ValueError(f"loss {name!r} does not apply to set-prediction detectors (deformable_detr); "
                         f"choose one of {', '.join(SET_LOSS_NAMES)}")
    try:
        return SET_CRITERIA[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for loss {name!r}: {err}") from None
