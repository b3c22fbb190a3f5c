"""Rank & Sort Loss (Oksuz et al., "Rank & Sort Loss for Object Detection and Instance
Segmentation", ICCV 2021). Released code: kemaloksuz/RankSortLoss
``mmdet/models/losses/ranking_losses.py``.

Continuous targets: ``y_i in (0, 1]`` for a positive (its IoU target), ``0`` negative, ``< 0``
ignored. Smoothed step ``H`` with ``delta = 0.5``; ``rank_pos(i) = sum_{k in P} H(s_k - s_i)``
(self included, ``H(0) = 1/2``), ``N_FP(i)``, ``rank(i) = rank_pos(i) + N_FP(i)``.

* Ranking error ``N_FP(i) / rank(i)``.
* Sorting error: current ``sum_{k in P} H(s_k - s_i)(1 - y_k) / rank_pos(i)`` minus target
  ``sum_k [y_k >= y_i] H(s_k - s_i)(1 - y_k) / sum_k [y_k >= y_i] H(s_k - s_i)``.
* Values returned: mean ranking error, mean sorting error.
* Error-driven gradients, all divided by ``|P|``: if ``N_FP(i) > eps``: ``g_i -= rank_err_i`` and
  every negative ``j`` gets ``H(s_j - s_i) rank_err_i / N_FP(i)``. Missorted positives of ``i``
  are the ``k`` with ``y_k < y_i``, weight ``H(s_k - s_i)``; if their sum ``M_i > eps``:
  ``g_i -= sort_err_i`` and each missorted ``k`` gets ``H(s_k - s_i) sort_err_i / M_i``.
  ``eps = 1e-10``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..ranking import (
    IdentityUpdateResult,
    LogitGradient,
    dominance_adjoint,
    dominance_sums,
    identity_update,
    smoothed_step,
)
from ..ranking.distributed import DistributedContext, resolve_context
from ..ranking.positive_windows import PositiveWindows
from ._precision import full_precision
from ._ranking_common import empty_result, flatten_batch, validate_logits_and_targets
from ._validation import check_continuous_targets, check_nonnegative_scalar

__all__ = ["rank_sort_loss", "RankSortLoss", "RankSortLossOutput"]

RANK_SORT_EPS = 1e-10


def _rank_sort_computation(targets: Tensor, delta: float, eps: float, context: DistributedContext):
    def compute(logits: Tensor, needs_grad: bool) -> IdentityUpdateResult:
        batch = flatten_batch(logits, targets, continuous=True)
        sizes = context.gather_sizes(batch.num_positives, batch.scores.device)
        num_pos = sum(sizes)
        if num_pos == 0:
            return empty_result(batch, 2)
        kernel = smoothed_step(delta)
        windows = PositiveWindows(batch.scores, batch.positive_index, batch.negative_mask, kernel, context, sizes)
        y = windows.gather(batch.targets[batch.positive_index].to(torch.float64))
        rank_pos = windows.positive_sums()
        false_pos = windows.false_positive_counts()
        rank = rank_pos + false_pos
        ranking_error = false_pos / rank
        current_sorting = windows.positive_sums(1.0 - y) / rank_pos
        (target_count, target_weighted), (missorted, _) = dominance_sums(
            windows.positive_scores, y, kernel, [None, 1.0 - y]
        )
        sorting_error = current_sorting - target_weighted / target_count
        dtype = batch.scores.dtype
        values = [ranking_error.mean().to(dtype), sorting_error.mean().to(dtype)]
        if not needs_grad:
            return IdentityUpdateResult(values, [LogitGradient(), LogitGradient()])
        zeros = torch.zeros_like(rank)
        grad_scale = context.gradient_scale / num_pos
        ranks_active = false_pos > eps
        sorts_active = missorted > eps
        negative_grad = windows.negative_gradient(
            torch.where(ranks_active, ranking_error / false_pos, zeros) * grad_scale
        )
        ranking_pos_grad = -torch.where(ranks_active, ranking_error, zeros) * grad_scale
        spread = dominance_adjoint(
            windows.positive_scores, y, kernel, torch.where(sorts_active, sorting_error / missorted, zeros)
        )
        sorting_pos_grad = (spread - torch.where(sorts_active, sorting_error, zeros)) * grad_scale
        grad_dtype = negative_grad.dtype
        local = windows.local
        gradients = [
            LogitGradient(dense=negative_grad, index=batch.positive_index,
                          values=ranking_pos_grad[local].to(grad_dtype)),
            LogitGradient(index=batch.positive_index, values=sorting_pos_grad[local].to(grad_dtype)),
        ]
        return IdentityUpdateResult(values, gradients)

    return compute


class RankSortLossOutput(NamedTuple):
    """The two components of Rank & Sort Loss."""

    ranking: Tensor
    sorting: Tensor


@full_precision
def rank_sort_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    delta: float = 0.5,
    eps: float = RANK_SORT_EPS,
    distributed: bool | None = None,
) -> RankSortLossOutput:
    """Rank & Sort Loss: (ranking, sorting) components of one batch.

    Args:
        logits: classification logits of any shape, any floating dtype and device.
        targets: same shape; ``(0, 1]`` positive with its IoU target, ``0`` negative, ``< 0`` ignored.
        delta: half-width of the smoothed step (``0``: exact step).
        eps: threshold below which an error is not propagated (released value 1e-10).
        distributed: rank the union of all data-parallel ranks' batches (default: whenever
            ``torch.distributed`` is initialised with several ranks); ``False``: this rank alone.

    Returns:
        ``(ranking, sorting)`` mean errors, each with its own error-driven gradient (divided by
        the number of positives). With no positive both are 0.
    """
    logits, targets = validate_logits_and_targets(logits, targets)
    check_continuous_targets(targets)
    delta = check_nonnegative_scalar(delta, "delta")
    eps = check_nonnegative_scalar(eps, "eps")
    context = resolve_context(distributed)
    ranking, sorting = identity_update(logits, _rank_sort_computation(targets.detach(), delta, eps, context))
    return RankSortLossOutput(ranking, sorting)


class RankSortLoss(nn.Module):
    """Module form of :func:`rank_sort_loss`; returns ``{"loss", "loss_rank", "loss_sort"}``."""

    def __init__(
        self, delta: float = 0.5, eps: float = RANK_SORT_EPS, loss_weight: float = 1.0, distributed: bool | None = None
    ) -> None:
        super().__init__()
        self.delta = check_nonnegative_scalar(delta, "delta")
        self.eps = check_nonnegative_scalar(eps, "eps")
        self.loss_weight = float(loss_weight)
        self.distributed = distributed

    def forward(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        ranking, sorting = rank_sort_loss(logits, targets, delta=self.delta, eps=self.eps,
                                          distributed=self.distributed)
        return {"loss": self.loss_weight * (ranking + sorting), "loss_rank": ranking, "loss_sort": sorting}

    def extra_repr(self) -> str:
        return f"delta={self.delta}, loss_weight={self.loss_weight}"
