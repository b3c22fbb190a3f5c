"""torchvision SSD (SSDLite head) on a MobileNetV2 backbone, with its own loss (``ce``) or a detlosses loss.

The detector is torchvision's ``SSD`` class with the pieces of torchvision's
``ssdlite320_mobilenet_v3_large``: ``SSDLiteHead`` (depthwise-separable prediction blocks),
the four extra feature blocks (``_extra_block``: 512, 256, 256, 128 channels), the default boxes
(``DefaultBoxGenerator``, aspect ratios 2 and 3 on 6 maps, scales 0.2 to 0.95), its matcher
(``SSDMatcher``, IoU 0.5 plus each ground truth's best box), box coder (weights 10, 10, 5, 5) and
post-processing. The backbone is MobileNetV2 (the only ImageNet weights available offline) cut as
torchvision cuts MobileNetV3 for SSDLite: the first map is the expansion layer of the first
stride-32 block (stride 16, 576 channels), the second the end of the feature extractor (stride 32,
1280 channels), i.e. SSDLite-MobileNetV2 of the MobileNetV2 paper. Images are ``image_size``
square (320 in the published SSDLite).

``ce`` is torchvision's SSD loss unchanged: softmax cross-entropy over ``C + 1`` classes (class 0 the
background) with 3:1 hard-negative mining, plus smooth-L1 (beta 1) on the positives' deltas, both
divided by the number of positives. Every other loss uses a sigmoid head over the ``C`` classes
(classification biases at the prior 0.01) and the whole batch's anchors x classes through
:class:`~detlosses.models.assignment.DenseAssignment`; ``ap`` is AP-Loss as in the AP-Loss paper (no
hard-negative mining, smooth-L1 boxes with SSD's beta 1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init
from torchvision.ops import boxes as box_ops

from .assignment import DenseAssignment, shift_labels
from .criteria import DetectionCriterion

__all__ = ["build_ssd", "check_ssd_config"]

PRIOR = 0.01


class MobileNetV2SSDLiteFeatures(nn.Module):
    """Six feature maps: MobileNetV2 at strides 16 (C4 expansion) and 32, then four extra blocks."""

    def __init__(self, features: nn.Sequential, norm_layer) -> None:
        super().__init__()
        # features[14] is the first stride-2 block of the stride-32 stage (no residual): split after its expansion
        split = 14
        self.features = nn.Sequential(
            nn.Sequential(*features[:split], features[split].conv[0]),
            nn.Sequential(*features[split].conv[1:], *features[split + 1:]),
        )
        extra = nn.ModuleList([
            _extra_block(features[-1].out_channels, 512, norm_layer),
            _extra_block(512, 256, norm_layer),
            _extra_block(256, 256, norm_layer),
            _extra_block(256, 128, norm_layer),
        ])
        _normal_init(extra)
        self.extra = extra

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        output = []
        for block in self.features:
            x = block(x)
            output.append(x)
        for block in self.extra:
            x = block(x)
            output.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(output))


class DetlossesSSD(SSD):
    """torchvision's SSD with 0-based labels in and out, a total ``"loss"`` and, for a detlosses
    criterion, a sigmoid head whose loss is the criterion over the whole batch."""

    def __init__(self, *args, criterion: DetectionCriterion, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.criterion = criterion
        self.background_class = criterion.name == "ce"

    def forward(self, images, targets=None):
        if self.background_class:
            targets = shift_labels(targets, 1)
        out = super().forward(images, targets)
        if self.training:
            losses = dict(out)
            if "loss" not in losses:  # torchvision's: {"bbox_regression", "classification"}
                losses = {"loss": losses["bbox_regression"] + losses["classification"], **losses}
            return losses
        if self.background_class:
            out = shift_labels(out, -1)
        return out

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # noqa: D401 - torchvision API
        if self.background_class:
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        batch = DenseAssignment.from_matches(targets, head_outputs, anchors, matched_idxs, self.box_coder)
        return self.criterion(batch)

    def postprocess_detections(self, head_outputs, image_anchors, image_shapes):  # noqa: D401
        if self.background_class:
            return super().postprocess_detections(head_outputs, image_anchors, image_shapes)
        # torchvision's post-processing with sigmoid scores over every class (no background column)
        scores_all = torch.sigmoid(head_outputs["cls_logits"])
        detections = []
        for deltas, scores, anchors, image_shape in zip(head_outputs["bbox_regression"], scores_all, image_anchors,
                                                        image_shapes, strict=True):
            boxes = box_ops.clip_boxes_to_image(self.box_coder.decode_single(deltas, anchors), image_shape)
            image_boxes, image_scores, image_labels = [], [], []
            for label in range(scores.shape[-1]):
                score = scores[:, label]
                keep = score > self.score_thresh
                score, box = score[keep], boxes[keep]
                score, idxs = score.topk(min(self.topk_candidates, score.numel()))
                image_boxes.append(box[idxs])
                image_scores.append(score)
                image_labels.append(torch.full_like(score, label, dtype=torch.int64))
            image_boxes, image_scores = torch.cat(image_boxes), torch.cat(image_scores)
            image_labels = torch.cat(image_labels)
            keep = box_ops.batched_nms(image_boxes, image_scores, image_labels, self.nms_thresh)
            keep = keep[: self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]})
        return detections


def check_ssd_config(config) -> None:
    """Settings that do not apply to SSD end in a ``ValueError`` naming them."""
    if config.backbone != "mobilenet_v2":
        raise ValueError(f"model 'ssd' is SSDLite on a MobileNetV2 backbone: backbone={config.backbone!r} is not "
                         "supported (use --backbone mobilenet_v2)")
    if config.head_norm != "group":
        raise ValueError(f"head_norm={config.head_norm!r} does not apply to ssd (SSDLite's head always uses "
                         "BatchNorm; head_norm is a RetinaNet setting)")
    if config.anchor_scale != 4.0:
        raise ValueError(f"anchor_scale={config.anchor_scale} does not apply to ssd (its default boxes are "
                         "torchvision's DefaultBoxGenerator, scales 0.2 to 0.95 of the image)")
    if config.fpn_channels != 256:
        raise ValueError(f"fpn_channels={config.fpn_channels} does not apply to ssd (SSDLite has no FPN)")
    if config.trainable_layers is not None:
        raise ValueError(f"trainable_layers={config.trainable_layers} does not apply to ssd (SSDLite trains its "
                         "whole backbone, as torchvision's does)")


def build_ssd(config, criterion: DetectionCriterion) -> nn.Module:
    """SSDLite-MobileNetV2 (torchvision SSD) trained by ``criterion`` (``ce``: torchvision's own loss)."""
    from .detectors import _WEIGHTS

    check_ssd_config(config)
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # as torchvision's SSDLite
    weights = _WEIGHTS["mobilenet_v2"] if config.pretrained_backbone else None
    backbone = MobileNetV2SSDLiteFeatures(mobilenet_v2(weights=weights, norm_layer=norm_layer).features, norm_layer)
    size = (config.image_size, config.image_size)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    backbone.eval()
    with torch.no_grad():
        channels = [f.shape[1] for f in backbone(torch.zeros(1, 3, *size)).values()]
    backbone.train()
    ce = criterion.name == "ce"
    num_classes = config.num_classes + 1 if ce else config.num_classes
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes, norm_layer)
    if not ce:
        with torch.no_grad():  # sigmoid classifier at the prior probability 0.01
            for block in head.classification_head.module_list:
                block[-1].bias.fill_(-math.log((1 - PRIOR) / PRIOR))
    return DetlossesSSD(
        backbone, anchors, size, num_classes, head=head, score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh, detections_per_img=config.detections_per_img, topk_candidates=300,
        criterion=criterion,
    )
