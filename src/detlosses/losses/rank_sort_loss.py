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

import functools
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..distributed import resolve_context
from ..ranking import HingeKernels, smoothed_step
from ..ranking.dominance import Dominance
from ._compiler import runs_eagerly
from ._precision import full_precision
from ._ranking import RankingBatch, RankingGradients, identity_update, no_positive_values, prepare
from ._validation import check_nonnegative_scalar

__all__ = ["rank_sort_loss", "RankSortLoss", "RankSortLossOutput"]

RANK_SORT_EPS = 1e-10


@functools.cache  # one formula per setting: the key of its CUDA graphs
def _rank_sort_formula(delta: float, eps: float):
    kernel = smoothed_step(delta)

    def formula(batch: RankingBatch) -> RankingGradients:
        y = batch.gather(batch.positive_targets.to(torch.float64))
        weights = batch.masked(torch.stack([torch.ones_like(y), 1.0 - y], 1))  # (padding: weight 0)
        false_positives, rank_pos, current_weighted = batch.sums(weights)
        rank = rank_pos + false_positives
        ranking_error = false_positives / rank
        # sorting error: current minus target (positives with an IoU target at least y_i)
        pairs = Dominance(batch.positive_scores, y, kernel)
        target_count, target_weighted = pairs.sums(weights).unbind(1)
        sorting_error = current_weighted / rank_pos - target_weighted / target_count
        missorted = rank_pos - target_count  # sum_k [y_k < y_i] H(s_k - s_i)
        grad_scale = batch.context.gradient_scale / batch.num_positives
        ranks_active = false_positives > eps
        sorts_active = missorted > eps
        sorting_spread = batch.masked(torch.where(sorts_active, sorting_error / missorted, 0.0))
        dtype = batch.scores.dtype
        return RankingGradients(
            values=[batch.mean(ranking_error, dtype), batch.mean(sorting_error, dtype)],
            negatives=[
                batch.negative_gradient(torch.where(ranks_active, ranking_error / false_positives, 0.0) * grad_scale),
                None,
            ],
            positives=[
                torch.where(ranks_active, ranking_error, 0.0).mul_(-grad_scale),
                (pairs.adjoint(sorting_spread) - torch.where(sorts_active, sorting_error, 0.0)) * grad_scale,
            ],
        )

    formula.uses_positive_targets = True  # (what a CUDA graph of it must be given, see ._graphs)
    return formula


class RankSortLossOutput(NamedTuple):
    """The two components of Rank & Sort Loss."""

    ranking: Tensor
    sorting: Tensor


@runs_eagerly
@full_precision
def rank_sort_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    delta: float = 0.5,
    eps: float = RANK_SORT_EPS,
    distributed: bool = False,
) -> RankSortLossOutput:
    """Rank & Sort Loss: (ranking, sorting) components of one batch.

    Args:
        logits: classification logits of any shape, any floating dtype and device.
        targets: same shape; ``(0, 1]`` positive with its IoU target, ``0`` negative, ``< 0`` ignored.
        delta: half-width of the smoothed step (``0``: exact step).
        eps: threshold below which an error is not propagated (released value 1e-10).
        distributed: rank the union of all data-parallel ranks' batches (opt-in, see
            :mod:`detlosses.distributed`); ``False``: the given tensors alone.

    Returns:
        ``(ranking, sorting)`` mean errors, each with its own error-driven gradient (divided by
        the number of positives). With no positive both are 0.
    """
    delta = check_nonnegative_scalar(delta, "delta")
    eps = check_nonnegative_scalar(eps, "eps")
    batch = prepare(logits, targets, HingeKernels.of(smoothed_step(delta)), resolve_context(distributed),
                    continuous=True)
    if batch is None:
        return RankSortLossOutput(*no_positive_values(logits, 2))
    ranking, sorting = identity_update(logits, batch, _rank_sort_formula(delta, eps))
    return RankSortLossOutput(ranking, sorting)


class RankSortLoss(nn.Module):
    """Module form of :func:`rank_sort_loss`: returns ``loss_weight * (ranking + sorting)`` (one
    tensor, like every module of this package); the detached components of the last call are in
    :attr:`last_components` (a :class:`RankSortLossOutput`, for logging)."""

    def __init__(
        self, delta: float = 0.5, eps: float = RANK_SORT_EPS, loss_weight: float = 1.0, distributed: bool = False
    ) -> None:
        super().__init__()
        self.delta = check_nonnegative_scalar(delta, "delta")
        self.eps = check_nonnegative_scalar(eps, "eps")
        self.loss_weight = float(loss_weight)
        self.distributed = distributed
        self.last_components: RankSortLossOutput | None = None

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        ranking, sorting = rank_sort_loss(logits, targets, delta=self.delta, eps=self.eps,
                                          distributed=self.distributed)
        self.last_components = RankSortLossOutput(ranking.detach(), sorting.detach())
        return self.loss_weight * (ranking + sorting)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, loss_weight={self.loss_weight}"
