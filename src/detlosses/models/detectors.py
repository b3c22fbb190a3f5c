"""torchvision RetinaNet and FCOS with any detlosses criterion.

The detectors are torchvision's own (``RetinaNet``, ``FCOS``, their heads, matchers, box coders,
anchor generators and post-processing), with backbones built by torchvision's FPN extractors
(``resnet_fpn_backbone``, ``mobilenet_backbone``). The only change is the head's
``compute_loss``: it packs the batch into a :class:`~detlosses.models.assignment.DenseAssignment`
and hands it to the chosen criterion, so the whole batch is ranked at once.

``pretrained_backbone=True`` loads ImageNet weights through torchvision's weights API (offline:
seed the torch hub cache first, see :func:`~detlosses.models.weights.seed_torch_hub_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights, ResNet50_Weights
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from .assignment import DenseAssignment
from .atss import atss_match
from .criteria import DetectionCriterion

__all__ = ["DetectorConfig", "build_detector", "MODELS", "BACKBONES", "ASSIGNERS"]

MODELS = ("retinanet", "fcos", "faster_rcnn", "ssd", "deformable_detr")  # deformable_detr needs transformers
ASSIGNERS = ("iou", "atss")
BACKBONES = ("resnet50", "resnet18", "mobilenet_v2")
_WEIGHTS = {
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
}
_ALL_LAYERS = {"resnet50": 5, "resnet18": 5, "mobilenet_v2": 6}


@dataclass(frozen=True)
class DetectorConfig:
    """What :func:`build_detector` builds.

    Attributes:
        model: ``"retinanet"`` or ``"fcos"``.
        backbone: ``"resnet50"``, ``"resnet18"`` or ``"mobilenet_v2"`` (each with an FPN, P3-P7).
        num_classes: number of object classes (no background class: sigmoid heads).
        image_size: training/evaluation images are square of this size (the data transforms
            resize them); anchors are laid out for it.
        pretrained_backbone: ImageNet weights via torchvision's weights API.
        trainable_layers: backbone stages to train (``None``: 3 if pretrained, else all).
        anchor_scale: RetinaNet anchors are ``anchor_scale * stride`` times ``2^(k/3)``, k = 0, 1, 2,
            with aspect ratios 0.5, 1, 2 (4 in the RetinaNet paper).
        fpn_channels: width of the FPN and of the heads (256 as published; 128 is 4x cheaper in
            the heads, which dominate the cost of small images on a CPU).
        head_norm: ``"group"`` (GroupNorm in the RetinaNet head convolutions, as torchvision's
            RetinaNet v2; FCOS always uses it) or ``"none"`` (the original RetinaNet head).
        anchors_per_octave: RetinaNet anchor scales per octave (3 in the RetinaNet paper, 2 in
            AP-Loss's, 1 in ATSS's).
        anchor_ratios: RetinaNet anchor aspect ratios (height / width).
        box_coder_weights: RetinaNet box coder weights ``(wx, wy, ww, wh)``: deltas are
            ``wx (x - xa) / wa``, ..., so ``(10, 10, 5, 5)`` is the "stds 0.1, 0.1, 0.2, 0.2" of mmdetection
            configs; torchvision's RetinaNet uses ``(1, 1, 1, 1)``.
        assigner: RetinaNet positives: ``"iou"`` (torchvision's matcher: IoU >= 0.5 positive, < 0.4
            background, in between ignored, low-quality matches allowed) or ``"atss"``
            (:func:`~detlosses.models.atss.atss_match`).
        atss_top_k: ATSS candidates per level and box.
        score_thresh, nms_thresh, detections_per_img: post-processing.
    """

    model: str = "retinanet"
    backbone: str = "mobilenet_v2"
    num_classes: int = 4
    image_size: int = 128
    pretrained_backbone: bool = False
    trainable_layers: int | None = None
    anchor_scale: float = 4.0
    fpn_channels: int = 256
    head_norm: str = "group"
    anchors_per_octave: int = 3
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    assigner: str = "iou"
    atss_top_k: int = 9
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    model_options: dict | None = None  # deformable_detr only: DeformableDetrOptions

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODELS}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.fpn_channels < 8:
            raise ValueError(f"fpn_channels must be >= 8, got {self.fpn_channels}")
        if self.head_norm not in ("group", "none"):
            raise ValueError(f"head_norm must be 'group' or 'none', got {self.head_norm!r}")
        if self.anchors_per_octave < 1:
            raise ValueError(f"anchors_per_octave must be >= 1, got {self.anchors_per_octave}")
        if not self.anchor_ratios or any(r <= 0 for r in self.anchor_ratios):
            raise ValueError(f"anchor_ratios must be positive numbers, got {list(self.anchor_ratios)}")
        if len(self.box_coder_weights) != 4 or any(w <= 0 for w in self.box_coder_weights):
            raise ValueError(f"box_coder_weights must be 4 positive numbers, got {list(self.box_coder_weights)}")
        if self.assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {ASSIGNERS}, got {self.assigner!r}")
        if self.model != "retinanet" and (self.assigner != "iou" or self.anchors_per_octave != 3
                                          or tuple(self.anchor_ratios) != (0.5, 1.0, 2.0)
                                          or tuple(self.box_coder_weights) != (1.0, 1.0, 1.0, 1.0)):
            raise ValueError(f"assigner, anchors_per_octave, anchor_ratios and box_coder_weights apply to RetinaNet "
                             f"only; model {self.model!r} has its own assignment and box coder")
        if self.atss_top_k < 1:
            raise ValueError(f"atss_top_k must be >= 1, got {self.atss_top_k}")
        if self.model_options and self.model != "deformable_detr":
            raise ValueError(f"model_options apply to deformable_detr only, not to {self.model}")


def _backbone(config: DetectorConfig) -> nn.Module:
    weights = _WEIGHTS[config.backbone] if config.pretrained_backbone else None
    norm_layer = FrozenBatchNorm2d if config.pretrained_backbone else nn.BatchNorm2d
    trainable = config.trainable_layers
    if trainable is None:
        trainable = 3 if config.pretrained_backbone else _ALL_LAYERS[config.backbone]
    extra = LastLevelP6P7(256, 256)
    if config.backbone == "mobilenet_v2":
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v2", weights=weights, fpn=True, norm_layer=norm_layer,
            trainable_layers=trainable, returned_layers=[2, 3, 4], extra_blocks=extra,
        )
    else:
        backbone = resnet_fpn_backbone(
            backbone_name=config.backbone, weights=weights, norm_layer=norm_layer,
            trainable_layers=trainable, returned_layers=[2, 3, 4], extra_blocks=extra,
        )
    if config.fpn_channels != backbone.out_channels:
        # torchvision's extractors fix the FPN width at 256: swap in a narrower torchvision FPN
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        width = config.fpn_channels
        backbone.fpn = FeaturePyramidNetwork(in_channels, width, extra_blocks=LastLevelP6P7(width, width))
        backbone.out_channels = width
    return backbone


def _strides(backbone: nn.Module, image_size: int) -> list[int]:
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, image_size, image_size))
    backbone.train(was_training)
    return [max(1, round(image_size / f.shape[-1])) for f in features.values()]


class _CriterionMixin:
    """Replaces a torchvision head's ``compute_loss`` by a detlosses criterion."""

    criterion: DetectionCriterion
    box_coder: object
    head_kind: str  # DenseAssignment.head

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # noqa: D401 - torchvision API
        batch = DenseAssignment.from_matches(targets, head_outputs, anchors, matched_idxs, self.box_coder,
                                             head=self.head_kind)
        losses = self.criterion(batch)
        if batch.head == "fcos":
            ctrness = _centerness_loss(batch)
            losses = dict(losses)
            losses["loss"] = losses["loss"] + ctrness
            losses["loss_ctrness"] = ctrness
        return losses


def _centerness_loss(batch: DenseAssignment) -> Tensor:
    """FCOS centerness: BCE of the positives' predicted centerness with ``sqrt(lr * tb)`` targets."""
    deltas = batch.positive_target_deltas()
    left_right, top_bottom = deltas[:, [0, 2]], deltas[:, [1, 3]]
    target = torch.sqrt(
        (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
        * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
    )
    logits = batch.extras["bbox_ctrness"].reshape(-1)[batch.positive_index]
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="sum")
    return loss / max(1, batch.num_positives)


class RetinaNetCriterionHead(_CriterionMixin, RetinaNetHead):
    head_kind = "retinanet"

    def __init__(
        self, in_channels: int, num_anchors: int, num_classes: int, criterion: DetectionCriterion,
        norm_layer=None,
    ):
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer)
        self.criterion = criterion
        self.box_coder = self.regression_head.box_coder


class FCOSCriterionHead(_CriterionMixin, FCOSHead):
    head_kind = "fcos"

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, criterion: DetectionCriterion):
        super().__init__(in_channels, num_anchors, num_classes)
        self.criterion = criterion


class LevelCountingAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` that also remembers how many anchors each level has (ATSS needs it)."""

    anchors_per_level: list[int]

    def forward(self, image_list, feature_maps):
        self.anchors_per_level = [f.shape[-2] * f.shape[-1] * n
                                  for f, n in zip(feature_maps, self.num_anchors_per_location(), strict=True)]
        return super().forward(image_list, feature_maps)


class ATSSRetinaNet(RetinaNet):
    """torchvision RetinaNet whose positives are chosen by ATSS instead of the IoU matcher."""

    def __init__(self, *args, atss_top_k: int = 9, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.atss_top_k = atss_top_k

    def compute_loss(self, targets, head_outputs, anchors):  # noqa: D401 - torchvision API
        per_level = self.anchor_generator.anchors_per_level
        matched_idxs = [atss_match(t["boxes"], a, per_level, self.atss_top_k)
                        for t, a in zip(targets, anchors, strict=True)]
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


def build_detector(config: DetectorConfig, criterion: DetectionCriterion) -> nn.Module:
    """torchvision RetinaNet/FCOS whose training loss is ``criterion`` (state in the model's state_dict)."""
    if config.model == "faster_rcnn":
        from .faster_rcnn import build_faster_rcnn

        return build_faster_rcnn(config, criterion)
    if config.model == "ssd":
        from .ssd import build_ssd

        return build_ssd(config, criterion)
    if config.model == "deformable_detr":  # transformers' Deformable DETR with a set criterion
        from .deformable_detr import build_deformable_detr

        return build_deformable_detr(config, criterion)
    backbone = _backbone(config)
    strides = _strides(backbone, config.image_size)
    common = dict(
        min_size=config.image_size, max_size=config.image_size, score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh, detections_per_img=config.detections_per_img,
    )
    if config.model == "retinanet":
        n = config.anchors_per_octave
        sizes = tuple(tuple(config.anchor_scale * s * 2 ** (k / n) for k in range(n)) for s in strides)
        anchors = LevelCountingAnchorGenerator(sizes, (tuple(config.anchor_ratios),) * len(strides))
        norm = partial(nn.GroupNorm, min(32, backbone.out_channels)) if config.head_norm == "group" else None
        head = RetinaNetCriterionHead(backbone.out_channels, anchors.num_anchors_per_location()[0],
                                      config.num_classes, criterion, norm_layer=norm)
        coder = BoxCoder(weights=tuple(float(w) for w in config.box_coder_weights))
        head.regression_head.box_coder = head.box_coder = coder
        if config.assigner == "atss":
            model = ATSSRetinaNet(backbone, config.num_classes, anchor_generator=anchors, head=head,
                                  atss_top_k=config.atss_top_k, **common)
        else:
            model = RetinaNet(backbone, config.num_classes, anchor_generator=anchors, head=head, **common)
        model.box_coder = coder  # decoding in post-processing
        return model
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSCriterionHead(backbone.out_channels, anchors.num_anchors_per_location()[0], config.num_classes,
                             criterion)
    return FCOS(backbone, config.num_classes, anchor_generator=anchors, head=head, **common)
