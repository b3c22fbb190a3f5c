"""The exact ranking engine shared by AP-Loss, aLRP Loss, Rank & Sort Loss and Parameterized AP Loss.

* :mod:`.kernels` — piecewise-polynomial kernels ``K(s_j - s_i)`` of a score difference;
* :mod:`.windows` — exact ``sum_j w_j K(x_j - q_i)`` and its adjoint in ``O((N + P) log P)``;
* :mod:`.dominance` — the same sums restricted by a second key (Rank & Sort's IoU order);
* :mod:`.identity_update` — the error-driven backward pass of the ranking losses.

Imports only torch.
"""

from .dominance import dominance_adjoint, dominance_sums
from .identity_update import IdentityUpdateResult, LogitGradient, identity_update
from .kernels import PiecewisePolynomialKernel, control_point_kernel, smoothed_step, square_kernel
from .windows import SortedWindows, working_dtype

__all__ = [
    "PiecewisePolynomialKernel",
    "smoothed_step",
    "control_point_kernel",
    "square_kernel",
    "SortedWindows",
    "working_dtype",
    "dominance_sums",
    "dominance_adjoint",
    "LogitGradient",
    "IdentityUpdateResult",
    "identity_update",
]
