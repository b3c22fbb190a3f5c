"""Detectors (torchvision RetinaNet / FCOS) trained with any detlosses criterion."""

from .assignment import BACKGROUND, IGNORED, DenseAssignment, aligned_iou
from .criteria import CRITERIA, LOSS_NAMES, DetectionCriterion, build_criterion
from .detectors import BACKBONES, MODELS, DetectorConfig, build_detector
from .model_losses import ALL_LOSS_NAMES, MODEL_LOSSES, build_model_criterion, default_loss, supported_losses
from .weights import seed_torch_hub_cache

__all__ = [
    "ALL_LOSS_NAMES",
    "MODEL_LOSSES",
    "build_model_criterion",
    "default_loss",
    "supported_losses",
    "BACKBONES",
    "BACKGROUND",
    "CRITERIA",
    "IGNORED",
    "LOSS_NAMES",
    "MODELS",
    "DenseAssignment",
    "DetectionCriterion",
    "DetectorConfig",
    "aligned_iou",
    "build_criterion",
    "build_detector",
    "seed_torch_hub_cache",
]
