"""AP-Loss (Chen et al., "Towards Accurate One-Stage Object Detection with AP-Loss", CVPR 2019;
TPAMI 2020). Released code: cccorn/AP-loss ``lib/model/aploss.py``.

For positives ``P`` and negatives ``N`` of the whole batch (one ranking over every image, anchor
and class), with the smoothed step ``H`` of half-width ``delta``:

* ``rank_pos(i) = 1 + sum_{k in P, k != i} H(s_k - s_i)``, ``N_FP(i) = sum_{j in N} H(s_j - s_i)``,
  ``rank(i) = rank_pos(i) + N_FP(i)``, ``prec(i) = rank_pos(i) / rank(i)``.
* Interpolated AP (released default): ``maxp(i) = max prec(k)`` over positives ``k`` with
  ``s_k <= s_i`` (a cummax in ascending score order); rows with ``prec(i) < maxp(i)`` are scaled
  by ``(1 - maxp(i)) / (1 - prec(i))``. Without interpolation ``maxp = prec``, scale 1.
* Loss value ``1 - mean_i maxp(i)``.
* Error-driven gradients (no autograd through ``H``), all divided by ``|P|``:
  negative ``j``: ``sum_i scale_i H(s_j - s_i) / rank(i)``; positive ``i``: ``-(1 - maxp(i))``.

Computed exactly in ``O((N + P) log P)`` by the shared ranking path (:mod:`._ranking`) instead of
the released loop over positives.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from ..distributed import resolve_context
from ..ranking import HingeKernels, smoothed_step
from ._compiler import runs_eagerly
from ._precision import full_precision
from ._ranking import RankingBatch, RankingGradients, identity_update, no_positive_values, prepare
from ._validation import check_nonnegative_scalar

__all__ = ["ap_loss", "APLoss"]


@functools.cache  # one formula per setting: the key of its CUDA graphs
def _ap_formula(delta: float, interpolate: bool):
    self_term = smoothed_step(delta).value_at(0.0)

    def formula(batch: RankingBatch) -> RankingGradients:
        false_positives, positive_sums = batch.sums()
        rank = (positive_sums + false_positives).add_(1.0 - self_term)
        error = false_positives / rank  # 1 - prec(i), without cancellation
        if interpolate:  # 1 - max precision at or below each score: a cummin in ascending score order
            order = torch.argsort(batch.positive_scores, stable=True)
            running = batch.masked(error, fill=math.inf)[order].cummin(0).values
            error = running.scatter(0, order, running)  # back to the positives' order (a permutation)
        grad_scale = batch.context.gradient_scale / batch.num_positives
        # row scale / rank(i) = (1 - maxp(i)) / N_FP(i); with N_FP(i) = 0 no negative sees i at all
        return RankingGradients(
            values=[batch.mean(error, batch.scores.dtype)],
            negatives=[batch.negative_gradient(error / false_positives.clamp(min=1e-300) * grad_scale)],
            positives=[error * -grad_scale],
        )

    return formula


@runs_eagerly
@full_precision
def ap_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    delta: float = 1.0,
    interpolate: bool = True,
    distributed: bool = False,
) -> Tensor:
    """AP-Loss of a batch of classification logits (one ranking over all entries).

    Args:
        logits: classification logits of any shape (e.g. ``(images, anchors, classes)``), any
            floating dtype, any device.
        targets: same shape; ``1`` positive, ``0`` negative, ``-1`` ignored.
        delta: half-width of the smoothed step ``H`` (``0``: exact step ``[x >= 0]``).
        interpolate: use interpolated AP (the released default) instead of the CVPR form.
        distributed: rank the union of all data-parallel ranks' batches (opt-in, see
            :mod:`detlosses.distributed`); ``False`` ranks the given tensors alone.

    Returns:
        Scalar ``1 - AP`` (in float32, or float64 for float64 logits). Its gradient w.r.t.
        ``logits`` is the error-driven AP-Loss update, already divided by the number of positives.
        With no positive the loss is 0 and every gradient 0.
    """
    delta = check_nonnegative_scalar(delta, "delta")
    kernels = HingeKernels.of(smoothed_step(delta))
    batch = prepare(logits, targets, kernels, resolve_context(distributed))
    if batch is None:
        return no_positive_values(logits, 1)[0]
    (loss,) = identity_update(logits, batch, _ap_formula(delta, bool(interpolate)))
    return loss


class APLoss(nn.Module):
    """Module form of :func:`ap_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(
        self, delta: float = 1.0, interpolate: bool = True, loss_weight: float = 1.0, distributed: bool = False
    ) -> None:
        super().__init__()
        self.delta = check_nonnegative_scalar(delta, "delta")
        self.interpolate = bool(interpolate)
        self.loss_weight = float(loss_weight)
        self.distributed = distributed

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.loss_weight * ap_loss(
            logits, targets, delta=self.delta, interpolate=self.interpolate, distributed=self.distributed
        )

    def extra_repr(self) -> str:
        return f"delta={self.delta}, interpolate={self.interpolate}, loss_weight={self.loss_weight}"
