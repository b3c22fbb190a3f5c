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

Computed exactly in ``O((N + P) log P)`` by :mod:`detlosses.ranking` instead of the released
loop over positives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ranking import IdentityUpdateResult, LogitGradient, identity_update, smoothed_step
from ..ranking.distributed import DistributedContext, resolve_context
from ..ranking.positive_windows import PositiveWindows
from ._precision import full_precision
from ._ranking_common import empty_result, flatten_batch, validate_logits_and_targets
from ._validation import check_nonnegative_scalar, check_ternary_targets

__all__ = ["ap_loss", "APLoss"]


def _interpolated_precision(precision: Tensor, scores: Tensor) -> Tensor:
    """``max prec(k)`` over positives with a score at or below each positive's (cummax)."""
    order = torch.argsort(scores, stable=True)
    running = torch.cummax(precision[order], dim=0).values
    out = torch.empty_like(precision)
    out[order] = running
    return out


def _ap_computation(targets: Tensor, delta: float, interpolate: bool, context: DistributedContext):
    def compute(logits: Tensor, needs_grad: bool) -> IdentityUpdateResult:
        batch = flatten_batch(logits, targets)
        sizes = context.gather_sizes(batch.num_positives, batch.scores.device)
        num_pos = sum(sizes)
        if num_pos == 0:
            return empty_result(batch, 1)
        kernel = smoothed_step(delta)
        windows = PositiveWindows(batch.scores, batch.positive_index, batch.negative_mask, kernel, context, sizes)
        rank_pos = 1.0 + windows.positive_sums() - windows.self_term
        rank = rank_pos + windows.false_positive_counts()
        precision = rank_pos / rank
        if interpolate:
            max_precision = _interpolated_precision(precision, windows.positive_scores)
            scale = torch.where(
                precision < max_precision, (1.0 - max_precision) / (1.0 - precision), torch.ones_like(precision)
            )
        else:
            max_precision, scale = precision, torch.ones_like(precision)
        value = (1.0 - max_precision.mean()).to(batch.scores.dtype)
        if not needs_grad:
            return IdentityUpdateResult([value], [LogitGradient()])
        grad_scale = context.gradient_scale / num_pos
        negative_grad = windows.negative_gradient(scale / rank * grad_scale)
        positive_grad = (-(1.0 - max_precision) * grad_scale)[windows.local]
        gradient = LogitGradient(
            dense=negative_grad, index=batch.positive_index, values=positive_grad.to(negative_grad.dtype)
        )
        return IdentityUpdateResult([value], [gradient])

    return compute


@full_precision
def ap_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    delta: float = 1.0,
    interpolate: bool = True,
    distributed: bool | None = None,
) -> Tensor:
    """AP-Loss of a batch of classification logits (one ranking over all entries).

    Args:
        logits: classification logits of any shape (e.g. ``(images, anchors, classes)``), any
            floating dtype, any device.
        targets: same shape; ``1`` positive, ``0`` negative, ``-1`` ignored.
        delta: half-width of the smoothed step ``H`` (``0``: exact step ``[x >= 0]``).
        interpolate: use interpolated AP (the released default) instead of the CVPR form.
        distributed: rank the union of all data-parallel ranks' batches (default: whenever
            ``torch.distributed`` is initialised with several ranks); ``False`` ranks this rank's
            share alone. See :mod:`detlosses.ranking.distributed`.

    Returns:
        Scalar ``1 - AP`` (in float32, or float64 for float64 logits). Its gradient w.r.t.
        ``logits`` is the error-driven AP-Loss update, already divided by the number of positives.
        With no positive the loss is 0 and every gradient 0.
    """
    logits, targets = validate_logits_and_targets(logits, targets)
    check_ternary_targets(targets)
    delta = check_nonnegative_scalar(delta, "delta")
    context = resolve_context(distributed)
    (loss,) = identity_update(logits, _ap_computation(targets.detach(), delta, bool(interpolate), context))
    return loss


class APLoss(nn.Module):
    """Module form of :func:`ap_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(
        self, delta: float = 1.0, interpolate: bool = True, loss_weight: float = 1.0, distributed: bool | None = None
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
