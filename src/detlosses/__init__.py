"""detlosses: exact, fast ranking-based and balanced losses for one-stage object detection.

The loss layer (this namespace, :mod:`detlosses.losses`, :mod:`detlosses.ranking`) needs only
torch and torchvision; the detector pipeline, search and command line are optional extras.
"""

from .losses import (
    GHMC,
    GHMR,
    ALRPLoss,
    ALRPLossOutput,
    APLoss,
    IoUBalancedFocalLoss,
    IoUBalancedSmoothL1Loss,
    PAPParams,
    ParameterizedAPLoss,
    RankSortLoss,
    RankSortLossOutput,
    alrp_loss,
    ap_loss,
    control_points_from_theta,
    iou_balanced_focal_loss,
    iou_balanced_smooth_l1_loss,
    load_pap_params,
    parameterized_ap_loss,
    rank_sort_loss,
    save_pap_params,
    scale_gradient,
    weight_reduce_loss,
)

__version__ = "0.1.0"

__all__ = [
    "ap_loss",
    "alrp_loss",
    "rank_sort_loss",
    "parameterized_ap_loss",
    "iou_balanced_focal_loss",
    "iou_balanced_smooth_l1_loss",
    "APLoss",
    "ALRPLoss",
    "ALRPLossOutput",
    "RankSortLoss",
    "RankSortLossOutput",
    "ParameterizedAPLoss",
    "GHMC",
    "GHMR",
    "IoUBalancedFocalLoss",
    "IoUBalancedSmoothL1Loss",
    "PAPParams",
    "control_points_from_theta",
    "load_pap_params",
    "save_pap_params",
    "scale_gradient",
    "weight_reduce_loss",
    "__version__",
]
