"""detlosses: exact, fast ranking-based and balanced losses for one-stage object detection.

The loss layer (this namespace, :mod:`detlosses.losses`, :mod:`detlosses.ranking`) needs only
torch and torchvision; the detector pipeline, search and command line are optional extras.

The top level holds the losses (functional and module forms), the Parameterized AP parameter
sets, the validation switch and the CUDA-graph switch; helpers (``scale_gradient``, ``weight_reduce_loss``,
``control_points_from_theta``) stay in :mod:`detlosses.losses`.

The names of ``__all__`` come from :mod:`detlosses.losses`, imported on first use (PEP 562), so that
``import detlosses.cli`` (``detlosses --help``) does not pay for importing torch and torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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
    "load_pap_params",
    "save_pap_params",
    "set_validate_args",
    "validate_args_enabled",
    "set_cuda_graphs",
    "cuda_graphs_enabled",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        value = getattr(importlib.import_module(f"{__name__}.losses"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
