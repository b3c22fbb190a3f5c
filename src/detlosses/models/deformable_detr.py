"""Deformable DETR (Hugging Face ``transformers``) trained with any set criterion of :mod:`.set_criteria`.

The detector is ``transformers``' ``DeformableDetrForObjectDetection`` (its pure-PyTorch multi-scale
deformable attention), built from a ``DeformableDetrConfig`` — no hub download — with:

* the project's backbones (``resnet18``, ``resnet50``, ``mobilenet_v2`` from torchvision, the same
  feature extractors as RetinaNet/FCOS without their FPN: strides 8, 16, 32, ImageNet weights through
  torchvision's weights API with ``pretrained_backbone``, ``trainable_layers`` as for the others).
  ``transformers`` builds its backbone from a config (its own ResNet, or timm); the library has no
  slot for a torchvision module, so the model is built with a tiny placeholder ResNet, whose feature
  extractor and input projections are then replaced by torchvision's extractor and projections of
  the right widths (initialised as the library initialises them);
* queries, layers and width from :class:`DeformableDetrOptions` (``model_options`` in the training
  config); the defaults are the published Deformable DETR (6 + 6 layers, 256 wide, 300 queries,
  4 feature levels, 4 sampling points), a small CPU model is e.g. ``num_queries=50,
  encoder_layers=2, decoder_layers=2, d_model=128``.

Training (``model(images, targets)`` in training mode, torchvision's API): images are normalised
with the ImageNet mean and standard deviation (as torchvision's detectors do internally), targets
are turned into the library's labels (normalised ``cx, cy, w, h``), and the model's loss hook hands
every decoder layer's logits and boxes to the criterion (:class:`~.set_criteria.SetPredictions`),
with the model's own Hungarian matcher and, for ``set``, its own set loss.

Evaluation (``model(images)``): Deformable DETR's post-processing — the ``detections_per_img``
largest sigmoid scores over every query x class of the last layer (no NMS: a set predictor), each
with its query's box — then the pipeline's ``score_thresh``, boxes in pixels (XYXY) of the input
image, labels 0-based: the output format of torchvision's detectors, so the training module
evaluates all models the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import resolve_context
from .set_criteria import SetCriterion, SetPredictions

__all__ = ["DeformableDetrOptions", "DeformableDetrDetector", "build_deformable_detr", "require_transformers"]

INSTALL_HINT = "the deformable_detr model needs the transformers library: pip install 'detlosses[detr]'"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def require_transformers():
    """Import ``transformers`` (the detr extra) or raise a ``ValueError`` that says how to install it."""
    try:
        import transformers  # noqa: F401
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
    except ImportError as err:
        raise ValueError(f"{INSTALL_HINT} ({err})") from None
    return DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig


@dataclass(frozen=True)
class DeformableDetrOptions:
    """Architecture and matcher/set-loss settings (``model_options`` of the training config).

    Defaults: the published Deformable DETR (single scale off, 4 levels, no box refinement, no
    two-stage). ``class_cost``, ``bbox_cost``, ``giou_cost`` weigh the Hungarian matcher (which
    decides the positives of every loss); ``bbox_loss_coefficient``, ``giou_loss_coefficient`` and
    ``focal_alpha`` are the ``set`` loss's own weights; ``auxiliary_loss`` adds the loss of every
    intermediate decoder layer (``set``; the ranking criteria always rank every layer).
    """

    num_queries: int = 300
    encoder_layers: int = 6
    decoder_layers: int = 6
    d_model: int = 256
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    attention_heads: int = 8
    num_feature_levels: int = 4
    n_points: int = 4
    dropout: float = 0.1
    with_box_refine: bool = False
    two_stage: bool = False
    auxiliary_loss: bool = True
    class_cost: int = 2
    bbox_cost: int = 5
    giou_cost: int = 2
    bbox_loss_coefficient: int = 5
    giou_loss_coefficient: int = 2
    focal_alpha: float = 0.25

    def __post_init__(self) -> None:
        for name in ("num_queries", "encoder_layers", "decoder_layers", "d_model", "encoder_ffn_dim",
                     "decoder_ffn_dim", "attention_heads", "num_feature_levels", "n_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model_options.{name} must be an integer >= 1, got {value!r}")
        if self.d_model % 32:
            raise ValueError(f"model_options.d_model must be a multiple of 32 (GroupNorm of 32 groups in the "
                             f"input projections), got {self.d_model}")
        if self.d_model % self.attention_heads:
            raise ValueError(f"model_options.d_model ({self.d_model}) must be divisible by attention_heads "
                             f"({self.attention_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"model_options.dropout must lie in [0, 1), got {self.dropout}")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("model_options.two_stage needs with_box_refine (as in Deformable DETR)")
        for name in ("class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient"):
            value = getattr(self, name)  # integers: the library's config types them so
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"model_options.{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.focal_alpha, bool) or not isinstance(self.focal_alpha, int | float) \
                or not 0.0 <= self.focal_alpha <= 1.0:
            raise ValueError(f"model_options.focal_alpha must be a number in [0, 1], got {self.focal_alpha!r}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> DeformableDetrOptions:
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown model_options {unknown} for deformable_detr; known: {sorted(known)}")
        return cls(**options)


class _TorchvisionFeatures(nn.Module):
    """torchvision's feature extractor (strides 8, 16, 32) returning a list, as the library expects."""

    def __init__(self, body: nn.Module, channels: list[int]) -> None:
        super().__init__()
        self.body = body
        self.channels = list(channels)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        return list(self.body(pixel_values).values())[-len(self.channels):]


def _torchvision_features(backbone: str, pretrained: bool, trainable_layers: int | None,
                          levels: int) -> _TorchvisionFeatures:
    """The last ``min(levels, 3)`` of the strides 8, 16, 32 (fewer levels: the coarsest, as published)."""
    from .detectors import DetectorConfig, _backbone

    # the RetinaNet/FCOS extractor of the same backbone; its FPN is dropped (Deformable DETR has none)
    dense = _backbone(DetectorConfig(model="retinanet", backbone=backbone, pretrained_backbone=pretrained,
                                     trainable_layers=trainable_layers))
    channels = [block[0].in_channels for block in dense.fpn.inner_blocks]
    return _TorchvisionFeatures(dense.body, channels[-min(levels, len(channels)):])


def _hf_config(options: DeformableDetrOptions, num_classes: int):
    DeformableDetrConfig, _, ResNetConfig = require_transformers()
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage2", "stage3", "stage4"])
    return DeformableDetrConfig(
        backbone_config=backbone, num_labels=num_classes, num_queries=options.num_queries,
        encoder_layers=options.encoder_layers, decoder_layers=options.decoder_layers, d_model=options.d_model,
        encoder_ffn_dim=options.encoder_ffn_dim, decoder_ffn_dim=options.decoder_ffn_dim,
        encoder_attention_heads=options.attention_heads, decoder_attention_heads=options.attention_heads,
        num_feature_levels=options.num_feature_levels, encoder_n_points=options.n_points,
        decoder_n_points=options.n_points, dropout=float(options.dropout), with_box_refine=options.with_box_refine,
        two_stage=options.two_stage, two_stage_num_proposals=options.num_queries,
        auxiliary_loss=options.auxiliary_loss, class_cost=options.class_cost, bbox_cost=options.bbox_cost,
        giou_cost=options.giou_cost, bbox_loss_coefficient=options.bbox_loss_coefficient,
        giou_loss_coefficient=options.giou_loss_coefficient, focal_alpha=float(options.focal_alpha),
        disable_custom_kernels=True,
    )


def _replace_backbone(model: nn.Module, features: _TorchvisionFeatures, d_model: int, levels: int) -> None:
    """Swap the placeholder backbone for ``features`` and rebuild the input projections to its widths."""
    encoder = model.model.backbone
    encoder.model = features
    encoder.intermediate_channel_sizes = features.channels
    channels = features.channels
    projections = []
    for width in channels:
        projections.append(nn.Sequential(nn.Conv2d(width, d_model, kernel_size=1), nn.GroupNorm(32, d_model)))
    in_channels = channels[-1]
    for _ in range(levels - len(projections)):
        projections.append(nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=3, stride=2, padding=1),
                                         nn.GroupNorm(32, d_model)))
        in_channels = d_model
    for projection in projections:  # as the library initialises them
        nn.init.xavier_uniform_(projection[0].weight, gain=1)
        nn.init.constant_(projection[0].bias, 0)
    model.model.input_proj = nn.ModuleList(projections)


def _init_heads(model: nn.Module, prior: float = 0.01) -> None:
    """The heads' initialisation of the Deformable DETR release, which the library's model does not apply:
    class biases at the prior ``0.01`` (as RetinaNet's), the box MLP's last layer zero (width and height
    biases at -2 without box refinement, so a query starts at its reference point with a small box)."""
    with torch.no_grad():
        for linear in model.class_embed:
            linear.bias.fill_(-math.log((1 - prior) / prior))
        for head in model.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        if not model.config.with_box_refine:
            for head in model.bbox_embed:
                head.layers[-1].bias[2:] = -2.0


def _capture_outputs(logits, labels, device, pred_boxes, config, outputs_class=None, outputs_coord=None, **kwargs):
    """The model's loss hook: hands every decoder layer's outputs back instead of a loss."""
    return None, {"outputs_class": outputs_class, "outputs_coord": outputs_coord}, None


def _data_parallel_box_scale(labels: list[dict[str, Tensor]], device: torch.device) -> Tensor | None:
    """The factor that makes the library's set loss normalise as Deformable DETR does under DDP.

    Deformable DETR divides every term by ``num_boxes = max(all-reduced boxes / W, 1)``, so that DDP's
    average of the ranks' gradients is the gradient of one process on the union. ``transformers`` does
    this only inside ``accelerate``; under any other launcher (Lightning's DDP) it divides by this
    rank's ``max(boxes, 1)``, which weights the ranks' images unequally. Returns
    ``max(local, 1) / max(total / W, 1)`` (no gradient; one all-reduce of a count), or ``None`` in a
    single process or when ``accelerate`` already normalised.
    """
    context = resolve_context(True)
    if not context.active or _accelerate_normalises():
        return None
    local = torch.tensor([float(sum(len(t["class_labels"]) for t in labels))], device=device)
    total = context.all_reduce_sum(local)
    return (local.clamp(min=1.0) / (total / context.world_size).clamp(min=1.0)).squeeze(0)


def _accelerate_normalises() -> bool:
    try:
        from accelerate import PartialState
    except ImportError:
        return False
    return PartialState._shared_state != {}


class DeformableDetrDetector(nn.Module):
    """Deformable DETR with torchvision's detector API: ``(images, targets) -> losses`` in training,
    ``images -> [{"boxes", "scores", "labels"}]`` otherwise."""

    def __init__(self, options: DeformableDetrOptions, num_classes: int, criterion: SetCriterion, *,
                 backbone: str = "resnet50", pretrained_backbone: bool = False, trainable_layers: int | None = None,
                 score_thresh: float = 0.05, detections_per_img: int = 100) -> None:
        super().__init__()
        if not isinstance(criterion, SetCriterion):
            raise ValueError(f"deformable_detr takes a set criterion, got {type(criterion).__name__}")
        _, DeformableDetrForObjectDetection, _ = require_transformers()
        self.options = options
        self.num_classes = int(num_classes)
        self.criterion = criterion
        self.score_thresh = float(score_thresh)
        self.detections_per_img = int(detections_per_img)
        features = _torchvision_features(backbone, pretrained_backbone, trainable_layers, options.num_feature_levels)
        config = _hf_config(options, num_classes)
        self.detr = DeformableDetrForObjectDetection(config)
        _replace_backbone(self.detr, features, options.d_model, options.num_feature_levels)
        _init_heads(self.detr)
        self.detr.loss_function = _capture_outputs
        self.register_buffer("pixel_mean", torch.tensor(_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_STD).view(3, 1, 1), persistent=False)
        from transformers.loss.loss_deformable_detr import (
            DeformableDetrForObjectDetectionLoss,
            DeformableDetrHungarianMatcher,
        )

        self._matcher = DeformableDetrHungarianMatcher(class_cost=options.class_cost, bbox_cost=options.bbox_cost,
                                                       giou_cost=options.giou_cost)
        self._model_loss = DeformableDetrForObjectDetectionLoss

    # ------------------------------------------------------------------ helpers
    def _pixels(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) != 1:
            raise ValueError(f"deformable_detr needs images of one size per batch, got sizes {sorted(sizes)}")
        pixels = (torch.stack(list(images)) - self.pixel_mean) / self.pixel_std
        mask = torch.ones((pixels.shape[0], *pixels.shape[-2:]), dtype=torch.long, device=pixels.device)
        return pixels, mask

    @staticmethod
    def _labels(targets: list[dict[str, Tensor]], height: int, width: int) -> list[dict[str, Tensor]]:
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        labels = []
        for target in targets:
            boxes = target["boxes"].float()
            xyxy = boxes / scale.to(boxes.device)
            cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), dim=1)
            labels.append({"class_labels": target["labels"].to(torch.int64), "boxes": cxcywh})
        return labels

    def _match(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]):
        return self._matcher({"logits": logits.detach(), "pred_boxes": boxes.detach()}, targets)

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        pixels, mask = self._pixels(images)
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            labels = self._labels(targets, *pixels.shape[-2:])
            output = self.detr(pixel_values=pixels, pixel_mask=mask, labels=labels)
            logits, boxes = output.loss_dict["outputs_class"], output.loss_dict["outputs_coord"]
            config = self.detr.config

            def model_loss():
                total, parts, _ = self._model_loss(logits[-1], labels, pixels.device, boxes[-1], config,
                                                   logits, boxes)
                scale = _data_parallel_box_scale(labels, pixels.device)
                if scale is not None:
                    total = total * scale
                    parts = {key: value * scale for key, value in parts.items()}
                return total, parts

            predictions = SetPredictions(logits=logits, boxes=boxes, targets=labels, matcher=self._match,
                                         model_loss=model_loss)
            return self.criterion(predictions)
        output = self.detr(pixel_values=pixels, pixel_mask=mask)
        return self.postprocess(output.logits, output.pred_boxes, pixels.shape[-2:])

    def postprocess(self, logits: Tensor, boxes: Tensor, size) -> list[dict[str, Tensor]]:
        """Top ``detections_per_img`` (query, class) scores per image, then ``score_thresh``; pixel XYXY boxes."""
        height, width = int(size[0]), int(size[1])
        batch, queries, classes = logits.shape
        scores = logits.sigmoid().reshape(batch, -1)
        k = min(self.detections_per_img, scores.shape[1])
        top, index = scores.topk(k, dim=1)
        query = torch.div(index, classes, rounding_mode="floor")
        label = index % classes
        cx, cy, w, h = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4)).unbind(-1)
        xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)
        xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype, device=xyxy.device)
        xyxy = torch.stack((xyxy[..., 0].clamp(0, width), xyxy[..., 1].clamp(0, height),
                            xyxy[..., 2].clamp(0, width), xyxy[..., 3].clamp(0, height)), dim=-1)
        out = []
        for b in range(batch):
            keep = top[b] > self.score_thresh
            out.append({"boxes": xyxy[b][keep], "scores": top[b][keep], "labels": label[b][keep]})
        return out


def build_deformable_detr(config, criterion: SetCriterion) -> DeformableDetrDetector:
    """Deformable DETR for a :class:`~detlosses.models.detectors.DetectorConfig`."""
    options = DeformableDetrOptions.from_mapping(getattr(config, "model_options", None))
    return DeformableDetrDetector(options, config.num_classes, criterion, backbone=config.backbone,
                                  pretrained_backbone=config.pretrained_backbone,
                                  trainable_layers=config.trainable_layers, score_thresh=config.score_thresh,
                                  detections_per_img=config.detections_per_img)
