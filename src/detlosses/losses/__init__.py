"""The loss functions: functional (torchvision.ops style) and ``nn.Module`` forms.

Imports only torch and torchvision.
"""

from ._grad_scale import scale_gradient
from ._graphs import cuda_graphs_enabled, set_cuda_graphs
from ._reduction import weight_reduce_loss
from ._validation import deferred_checks, set_validate_args, validate_args_enabled
from .alrp_loss import ALRPLoss, ALRPLossOutput, alrp_loss
from .ap_loss import APLoss, ap_loss
from .ghm import GHMC, GHMR, ghmc_loss, ghmr_loss
from .iou_balanced import (
    IoUBalancedFocalLoss,
    IoUBalancedSmoothL1Loss,
    iou_balanced_focal_loss,
    iou_balanced_smooth_l1_loss,
)
from .pap_params import (
    PAPParams,
    control_points_from_theta,
    load_pap_params,
    save_pap_params,
)
from .parameterized_ap_loss import ParameterizedAPLoss, parameterized_ap_loss
from .rank_sort_loss import RankSortLoss, RankSortLossOutput, rank_sort_loss

__all__ = [
    "ap_loss",
    "alrp_loss",
    "rank_sort_loss",
    "parameterized_ap_loss",
    "ghmc_loss",
    "ghmr_loss",
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
    "set_validate_args",
    "validate_args_enabled",
    "deferred_checks",
    "set_cuda_graphs",
    "cuda_graphs_enabled",
]
