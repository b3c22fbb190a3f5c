"""The exact ranking engine shared by AP-Loss, aLRP Loss, Rank & Sort Loss and Parameterized AP Loss.

* :mod:`.kernels` — piecewise-polynomial kernels ``K(s_j - s_i)`` of a score difference;
* :mod:`.engine` — exact ``sum_j w_j K(x_j - q_i)`` and its adjoint in ``O((N + P) log P)`` with a
  fixed number of operators (kernels in hinge form, one bucketing, one cumulative sum);
* :mod:`.dominance` — the same sums among positives restricted by a second key (Rank & Sort's
  IoU order).

Imports only torch.
"""

from .dominance import dominance_adjoint, dominance_sums
from .engine import HingeKernels, PointSet, Windows, working_dtype
from .kernels import PiecewisePolynomialKernel, control_point_kernel, smoothed_step, square_kernel

__all__ = [
    "PiecewisePolynomialKernel",
    "smoothed_step",
    "control_point_kernel",
    "square_kernel",
    "HingeKernels",
    "PointSet",
    "Windows",
    "working_dtype",
    "dominance_sums",
    "dominance_adjoint",
]
