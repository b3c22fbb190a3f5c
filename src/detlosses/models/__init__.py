"""Detectors (torchvision RetinaNet / FCOS) trained with any detlosses criterion."""

from .assignment import BACKGROUND, IGNORED, DenseAssignment, aligned_iou
from .criteria import CRITERIA, LOSS_NAMES, DetectionCriterion, build_criterion
from .detectors import BACKBONES, MODELS, DetectorConfig, build_detector
from .weights import seed_torch_hub_cache

__all__ = [
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
