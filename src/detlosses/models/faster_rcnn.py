"""torchvision Faster R-CNN (FPN) trained with torchvision's losses (``ce``) or a detlosses loss in both stages.

The detector is torchvision's ``FasterRCNN``: its backbone extractors (``resnet_fpn_backbone``,
``mobilenet_backbone``, P3-P5 plus a max-pooled P6; anchors ``anchor_scale * stride`` with aspect
ratios 0.5, 1, 2), ``RegionProposalNetwork`` (anchor generator, head, matcher, proposal filtering and
NMS), ``RoIHeads`` (``MultiScaleRoIAlign``, ``TwoMLPHead`` of width ``4 * fpn_channels``, box coder,
matcher, post-processing) and transform.

``ce`` keeps all of it, losses included (softmax R-CNN head with a background class, 256 sampled
anchors and 512 sampled RoIs per image, smooth-L1 boxes). Any other loss replaces only the loss path,
as in the released aLRP / Rank & Sort / Parameterized AP Faster R-CNN configs:

- RPN: every anchor is used (no sampling): IoU >= 0.7 positive, < 0.3 negative, in between ignored,
  low-quality matches kept (torchvision's RPN matcher); the objectness logits of the whole batch are
  one ranking with one class; box coder stds (0.1, 0.1, 0.2, 0.2) (weights 10, 10, 5, 5), boxes
  decoded for GIoU; 1000 proposals per image after NMS in training. The RPN loss is weighted by
  ``rpn_weight`` (0.20 for ``alrp`` and ``rank_sort``, as released; 1 otherwise).
- R-CNN: every proposal (the ground-truth boxes added, as mmdetection's sampler does) is used, no
  512-RoI sampling: IoU >= 0.5 positive, < 0.5 negative, no low-quality matches; per-class
  **sigmoid** logits (no background class), all proposals x classes of the batch are one ranking;
  class-specific regression, decoded with torchvision's R-CNN box coder (weights 10, 10, 5, 5).

Each stage has its own criterion (:class:`TwoStageCriterion`): aLRP has one self-balance weight per
stage; Rank & Sort's IoU targets are the IoUs of the regressed anchors / proposals; Parameterized AP
uses the released presets ``faster_rcnn_rpn`` and ``faster_rcnn_rcnn`` with their ``reg_weight``
(1.6950 and 7.1324); ``ap`` and ``focal`` use GIoU on decoded boxes in both stages; ``ghm`` and
``iou_balanced`` regress deltas (GHM-R, IoU-balanced smooth-L1) as their definitions do.

``loss_options``: keys shared by both stages' criteria, ``rpn: {...}`` and ``rcnn: {...}`` for one
stage, ``rpn_weight``, and for ``pap`` ``params_file`` (a two-stage params file written by
``detlosses search --model faster_rcnn``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..losses.pap_params import load_two_stage_pap_params
from .assignment import BACKGROUND, IGNORED, DenseAssignment, shift_labels
from .criteria import DetectionCriterion, build_criterion

__all__ = ["TwoStageCriterion", "build_faster_rcnn", "STAGES", "RPN_WEIGHTS"]

STAGES = ("rpn", "rcnn")
RPN_WEIGHTS = {"alrp": 0.2, "rank_sort": 0.2}
"""The released RPN ``head_weight`` per loss (1 for the others)."""
_STAGE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "pap": {"rpn": {"params": "faster_rcnn_rpn"}, "rcnn": {"params": "faster_rcnn_rcnn"}},
    "ap": {"rpn": {"box_loss": "giou"}, "rcnn": {"box_loss": "giou"}},
    "focal": {"rpn": {"box_loss": "giou"}, "rcnn": {"box_loss": "giou"}},
}
_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # stds (0.1, 0.1, 0.2, 0.2)


class TwoStageCriterion(DetectionCriterion):
    """One criterion per stage (``self.rpn``, ``self.rcnn``) of the same loss.

    Args:
        loss: a one-stage loss name (``ap``, ``alrp``, ``rank_sort``, ``pap``, ``focal``, ``ghm``,
            ``iou_balanced``).
        rpn, rcnn: options of one stage's criterion (override the shared ones).
        rpn_weight: weight of the RPN loss (default: 0.20 for aLRP and Rank & Sort, else 1).
        params_file: ``pap`` only: a two-stage params file (both stages' control points and reg_weights).
        **shared: options of both stages' criteria.
    """

    def __init__(self, loss: str, rpn: dict[str, Any] | None = None, rcnn: dict[str, Any] | None = None,
                 rpn_weight: float | None = None, params_file: str | None = None, **shared: Any) -> None:
        super().__init__()
        self.name = loss
        stage_options = {"rpn": dict(rpn or {}), "rcnn": dict(rcnn or {})}
        for stage, value in (("rpn", rpn), ("rcnn", rcnn)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"loss_options.{stage} must be a mapping of options, got {value!r}")
        if params_file is not None:
            if loss != "pap":
                raise ValueError(f"params_file is an option of loss 'pap', not of {loss!r}")
            for stage, params in load_two_stage_pap_params(params_file).items():
                stage_options[stage] = {"params": params, **stage_options[stage]}
        defaults = _STAGE_DEFAULTS.get(loss, {})
        built = {}
        for stage in STAGES:
            options = {**defaults.get(stage, {}), **shared, **stage_options[stage]}
            try:
                built[stage] = build_criterion(loss, **options)
            except ValueError as err:
                raise ValueError(f"Faster R-CNN {stage.upper()} stage: {err}") from None
        self.rpn, self.rcnn = built["rpn"], built["rcnn"]
        weight = RPN_WEIGHTS.get(loss, 1.0) if rpn_weight is None else rpn_weight
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight >= 0:
            raise ValueError(f"rpn_weight must be a number >= 0, got {rpn_weight!r}")
        self.rpn_weight = float(weight)

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:  # pragma: no cover - stages are called
        raise RuntimeError("a two-stage criterion is called per stage: criterion.rpn(batch), criterion.rcnn(batch)")

    def epoch_end(self) -> dict[str, float]:
        out = {}
        for stage in STAGES:
            out.update({f"{stage}_{k}": v for k, v in getattr(self, stage).epoch_end().items()})
        return out

    def extra_logs(self) -> dict[str, Tensor | float]:
        out = {}
        for stage in STAGES:
            out.update({f"{stage}_{k}": v for k, v in getattr(self, stage).extra_logs().items()})
        return out

    def gradient_norm_histogram(self) -> tuple[list[float], list[float]] | None:
        return self.rcnn.gradient_norm_histogram()  # the R-CNN head's classification (GHM)


def _stage_losses(stage: str, losses: dict[str, Tensor], weight: float = 1.0) -> dict[str, Tensor]:
    total = losses["loss"] * weight if weight != 1.0 else losses["loss"]
    return {f"loss_{stage}": total, **{f"{stage}_{k}": v for k, v in losses.items() if k != "loss"}}


class CriterionRPN(RegionProposalNetwork):
    """torchvision's RPN whose loss is a detlosses criterion over every anchor of the batch."""

    def __init__(self, *args: Any, criterion: DetectionCriterion, weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.box_coder = BoxCoder(weights=_BOX_WEIGHTS)
        self.criterion = criterion
        self.weight = float(weight)
        self.last_losses: dict[str, Tensor] = {}
        self._assigned: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None

    def assign_targets_to_anchors(self, anchors, targets):  # noqa: D401 - torchvision API
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        self._assigned = (anchors, labels, matched_gt_boxes)  # compute_loss needs the anchors
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):  # noqa: D401
        anchors, labels, matched = self._assigned
        self._assigned = None
        state = torch.stack(labels)  # 1 positive, 0 negative, -1 between the thresholds
        classes = torch.full(state.shape, BACKGROUND, dtype=torch.int64, device=state.device)
        classes = classes.masked_fill(state > 0, 0).masked_fill(state < 0, IGNORED)
        images = len(anchors)
        dtype = pred_bbox_deltas.dtype
        boxes = torch.stack(matched).masked_fill((state <= 0).unsqueeze(-1), 0.0).to(dtype)
        batch = DenseAssignment(
            cls_logits=objectness.reshape(images, -1, 1), box_regression=pred_bbox_deltas.reshape(images, -1, 4),
            anchors=torch.stack(anchors), labels=classes, matched_boxes=boxes, box_coder=self.box_coder,
        )
        self.last_losses = _stage_losses("rpn", self.criterion(batch), self.weight)
        total = self.last_losses["loss_rpn"]
        return total, torch.zeros_like(total)


class CriterionRoIHeads(RoIHeads):
    """torchvision's RoIHeads with a per-class sigmoid classifier trained by a detlosses criterion on
    every proposal of the batch (no sampling)."""

    def __init__(self, *args: Any, criterion: DetectionCriterion, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.criterion = criterion

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: D401 - torchvision API
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training")
        dtype = proposals[0].dtype
        proposals = self.add_gt_proposals(proposals, [t["boxes"].to(dtype) for t in targets])
        labels, boxes = [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(dtype), target["labels"]
            if gt_boxes.numel() == 0:
                matched = torch.full((props.shape[0],), -1, dtype=torch.int64, device=props.device)
            else:
                matched = self.proposal_matcher(box_ops.box_iou(gt_boxes, props))
            safe = matched.clamp(min=0)
            if gt_labels.numel():
                lab, box = gt_labels[safe], gt_boxes[safe]
            else:
                lab, box = torch.zeros_like(matched), props.new_zeros(props.shape)
            labels.append(lab.masked_fill(matched == -1, BACKGROUND).masked_fill(matched == -2, IGNORED))
            boxes.append(box.masked_fill((matched < 0).unsqueeze(-1), 0.0))
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        labels_all = torch.cat(labels)
        count, num_classes = class_logits.shape
        # class-specific regression: each proposal's deltas for its ground truth's class
        per_class = box_regression.reshape(count, -1, 4)
        index = labels_all.clamp(min=0).view(count, 1, 1).expand(count, 1, 4)
        deltas = per_class.gather(1, index).squeeze(1)
        batch = DenseAssignment(
            cls_logits=class_logits.reshape(1, count, num_classes), box_regression=deltas.reshape(1, count, 4),
            anchors=torch.cat(proposals).detach().reshape(1, count, 4), labels=labels_all.reshape(1, count),
            matched_boxes=torch.cat(boxes).reshape(1, count, 4).to(deltas.dtype), box_coder=self.box_coder,
        )
        return [], _stage_losses("rcnn", self.criterion(batch))

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):  # noqa: D401
        """torchvision's post-processing with sigmoid scores over every class (no background column)."""
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = torch.sigmoid(class_logits)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes.split(counts, 0), pred_scores.split(counts, 0),
                                              image_shapes, strict=True):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels


class DetlossesFasterRCNN(FasterRCNN):
    """torchvision's FasterRCNN with 0-based labels in and out and a total ``"loss"`` in training."""

    background_class: bool = True  # torchvision's softmax head: class 0 is the background

    def forward(self, images, targets=None):
        if self.background_class:
            targets = shift_labels(targets, 1)
        out = super().forward(images, targets)
        if self.training:
            losses = dict(out)
            if isinstance(self.rpn, CriterionRPN):
                losses.pop("loss_objectness", None)
                losses.pop("loss_rpn_box_reg", None)
                losses.update(self.rpn.last_losses)
                total = losses["loss_rpn"] + losses["loss_rcnn"]
            else:
                total = sum(losses.values())
            return {"loss": total, **losses}
        if self.background_class:
            out = shift_labels(out, -1)
        return out


def _fpn_backbone(config) -> nn.Module:
    from .detectors import _ALL_LAYERS, _WEIGHTS

    weights = _WEIGHTS[config.backbone] if config.pretrained_backbone else None
    norm_layer = FrozenBatchNorm2d if config.pretrained_backbone else nn.BatchNorm2d
    trainable = config.trainable_layers
    if trainable is None:
        trainable = 3 if config.pretrained_backbone else _ALL_LAYERS[config.backbone]
    if config.backbone == "mobilenet_v2":
        backbone = mobilenet_backbone(backbone_name="mobilenet_v2", weights=weights, fpn=True, norm_layer=norm_layer,
                                      trainable_layers=trainable, returned_layers=[2, 3, 4])
    else:
        backbone = resnet_fpn_backbone(backbone_name=config.backbone, weights=weights, norm_layer=norm_layer,
                                       trainable_layers=trainable, returned_layers=[2, 3, 4])
    if config.fpn_channels != backbone.out_channels:
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_channels, config.fpn_channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = config.fpn_channels
    return backbone


def check_faster_rcnn_config(config) -> None:
    if config.head_norm != "group":
        raise ValueError(f"head_norm={config.head_norm!r} does not apply to faster_rcnn (it sets the RetinaNet "
                         "head's normalisation; Faster R-CNN uses torchvision's RPN head and TwoMLPHead)")


def build_faster_rcnn(config, criterion: DetectionCriterion) -> nn.Module:
    """torchvision FasterRCNN with an FPN on ``config.backbone``; ``criterion`` ``ce`` keeps its losses."""
    from .detectors import _strides

    check_faster_rcnn_config(config)
    torchvision_loss = criterion.name == "ce"
    if not torchvision_loss and not isinstance(criterion, TwoStageCriterion):
        raise ValueError(f"faster_rcnn needs a two-stage criterion for loss {criterion.name!r} "
                         "(build it with build_model_criterion('faster_rcnn', ...))")
    backbone = _fpn_backbone(config)
    strides = _strides(backbone, config.image_size)
    anchors = AnchorGenerator(tuple((config.anchor_scale * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    levels = [str(k) for k in range(len(strides) - 1)]  # every FPN level but the max-pooled one
    representation = 4 * backbone.out_channels
    num_classes = config.num_classes + 1 if torchvision_loss else config.num_classes
    model = DetlossesFasterRCNN(
        backbone, num_classes=None, min_size=config.image_size, max_size=config.image_size,
        rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes), box_score_thresh=config.score_thresh,
        box_nms_thresh=config.nms_thresh, box_detections_per_img=config.detections_per_img,
    )
    if torchvision_loss:
        return model
    model.background_class = False
    old = model.rpn
    model.rpn = CriterionRPN(
        old.anchor_generator, old.head, 0.7, 0.3, 256, 0.5, dict(training=2000, testing=1000),
        dict(training=1000, testing=1000), old.nms_thresh, score_thresh=old.score_thresh,
        criterion=criterion.rpn, weight=criterion.rpn_weight,
    )
    heads = model.roi_heads
    model.roi_heads = CriterionRoIHeads(
        heads.box_roi_pool, heads.box_head, heads.box_predictor, 0.5, 0.5, 512, 0.25, None, heads.score_thresh,
        heads.nms_thresh, heads.detections_per_img, criterion=criterion.rcnn,
    )
    return model
