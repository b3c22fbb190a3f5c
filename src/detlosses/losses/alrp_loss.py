"""aLRP Loss (Oksuz et al., "A Ranking-based, Balanced Loss Function Unifying Classification and
Localisation in Object Detection", NeurIPS 2020). Released code: kemaloksuz/aLRPLoss
``mmdet/models/losses/alrp_loss.py`` and ``dense_heads/alrp_loss_retina_head.py``.

With ``rank_pos``, ``N_FP``, ``rank`` and ``prec`` as in AP-Loss (smoothed step, ``delta = 1``) and
``e_k`` the localisation error of positive ``k`` (``1 - GIoU`` in the released head), taken as a
constant by the classification part:

* Classification value ``L_cls = 1 - mean_i prec(i)``.
* Error-driven gradients, only for positives with ``N_FP(i) > eps`` (``eps = 1e-5``), all divided
  by ``|P|``: positive ``i``: ``g_i = -(sum_{k in P, k != i} H(s_k - s_i) e_k + N_FP(i)) / rank(i)``;
  each negative ``j`` receives ``H(s_j - s_i) (-g_i) / N_FP(i)``. Positives and negatives receive
  equal total magnitude (the paper's balance theorem).
* Localisation value: positives sorted by logit, descending (ties keep the order of
  ``targets.flatten()``), ``L_loc = mean_i cumsum(e)_i / rank(i)`` with ``rank`` detached; its
  gradient reaches the boxes through ``e`` by autograd.
* Self-balance (:class:`ALRPLoss`): ``L = L_cls + w L_loc``, ``w = 50`` initially, and at the end of
  every epoch ``w = (mean L_loc + mean L_cls) / mean L_loc`` over the epoch's iterations.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..distributed import resolve_context
from ..ranking import HingeKernels, smoothed_step
from ._compiler import runs_eagerly
from ._precision import full_precision
from ._ranking import RankingBatch, RankingGradients, ValueCheck, identity_update, no_positive_values, prepare
from ._self_balance import SelfBalance
from ._validation import check_nonnegative_scalar, check_tensor

__all__ = ["alrp_loss", "ALRPLoss", "ALRPLossOutput"]

ALRP_EPS = 1e-5


@functools.cache  # one formula per setting: the key of its CUDA graphs
def _alrp_formula(delta: float, eps: float, loc_dtype: torch.dtype):
    """The localisation errors of all ranks' positives are ``batch.extra`` (float64, detached)."""
    self_term = smoothed_step(delta).value_at(0.0)

    def formula(batch: RankingBatch) -> RankingGradients:
        errors = batch.extra
        weights = torch.linalg.vander(errors, N=2)  # (P, 2): [1, e_k]
        false_positives, rank_pos, errors_above = batch.sums(weights)
        rank = (rank_pos + false_positives).add_(1.0 - self_term)
        share = batch.masked(torch.div(1.0 / batch.num_positives, rank))  # 1 / (|P| rank(i))
        active = false_positives > eps
        # what positive i passes on: (sum_{k != i} H(s_k - s_i) e_k + N_FP(i)) / rank(i), over |P|
        passed = torch.add(errors_above, errors, alpha=-self_term).add_(false_positives).mul_(share)
        if batch.context.active:  # DDP averages over the ranks: undo it
            passed.mul_(batch.context.gradient_scale)
        # localisation: L_loc = sum_k e_k d_k, d_k the sum of 1 / (|P| rank) over k and every positive
        # after it in descending logit order (ties in targets.flatten() order)
        # cumulated from the last in that order: reversed[k] sums the shares of every positive from
        # reversed_order[k] on, and goes back to that positive (a permutation)
        reversed_order = torch.argsort(batch.positive_scores, descending=True, stable=True).flip(0)
        reversed_sums = share[reversed_order].cumsum(0)
        coefficients = reversed_sums.scatter(0, reversed_order, reversed_sums)
        dtype = batch.scores.dtype
        return RankingGradients(
            values=[batch.mean(false_positives / rank, dtype), torch.dot(errors, coefficients).to(loc_dtype)],
            negatives=[batch.negative_gradient(torch.where(active, passed / false_positives, 0.0)), None],
            positives=[torch.where(active, passed, 0.0).neg_(), None],
            extra=[None, coefficients * batch.context.gradient_scale if batch.context.active else coefficients],
        )

    return formula


class ALRPLossOutput(NamedTuple):
    """The two components of aLRP Loss."""

    classification: Tensor
    localisation: Tensor


@runs_eagerly
@full_precision
def alrp_loss(
    logits: Tensor,
    targets: Tensor,
    loc_errors: Tensor,
    *,
    delta: float = 1.0,
    eps: float = ALRP_EPS,
    distributed: bool = False,
) -> ALRPLossOutput:
    """aLRP Loss: (classification, localisation) components of one batch.

    Args:
        logits: classification logits of any shape, any floating dtype and device.
        targets: same shape; ``1`` positive, ``0`` negative, ``-1`` ignored.
        loc_errors: ``(P,)`` localisation error of every positive (e.g. ``1 - GIoU``), in the order
            the positives appear in ``targets.flatten()``; differentiable (the localisation
            component's gradient flows through it), a constant for the classification part.
        delta: half-width of the smoothed step (``0``: exact step).
        eps: positives with ``N_FP <= eps`` get no classification gradient (released value 1e-5).
        distributed: rank the union of all data-parallel ranks' batches (opt-in, see
            :mod:`detlosses.distributed`); ``False``: the given tensors alone.

    Returns:
        ``(classification, localisation)``; combine them as ``cls + w * loc`` (see
        :class:`ALRPLoss` for the self-balance weight ``w``). With no positive both are 0.
    """
    loc_errors = check_tensor(loc_errors, "loc_errors", floating=True)
    if loc_errors.dim() != 1:
        raise ValueError(f"loc_errors must be 1-D (one entry per positive), got shape {tuple(loc_errors.shape)}")
    if isinstance(logits, Tensor) and loc_errors.device != logits.device:
        raise ValueError(f"loc_errors is on {loc_errors.device} but logits is on {logits.device}")
    delta = check_nonnegative_scalar(delta, "delta")
    eps = check_nonnegative_scalar(eps, "eps")
    context = resolve_context(distributed)

    def one_error_per_positive(count: int) -> None:
        if loc_errors.numel() != count:
            raise ValueError(
                f"loc_errors has {loc_errors.numel()} entries but targets has {count} positives; "
                "give one localisation error per positive, in targets.flatten() order"
            )

    batch = prepare(logits, targets, HingeKernels.of(smoothed_step(delta)), context,
                    checks=[ValueCheck(loc_errors, "loc_errors")], before_windows=one_error_per_positive)
    if batch is None:
        zero = no_positive_values(logits, 1)[0]
        return ALRPLossOutput(zero, loc_errors.sum() * 0.0)
    loc_dtype = torch.float64 if loc_errors.dtype == torch.float64 else torch.float32
    classification, localisation = identity_update(logits, batch, _alrp_formula(delta, eps, loc_dtype),
                                                   extra=loc_errors)
    return ALRPLossOutput(classification, localisation)


class ALRPLoss(nn.Module):
    """aLRP Loss with the self-balance weight of Oksuz et al. (NeurIPS 2020, Sec. 4.2).

    ``forward`` returns the combined loss ``loss_weight * (cls + w * loc)`` (one tensor, like every
    module of this package); the detached components of the last call are in
    :attr:`last_components` (an :class:`ALRPLossOutput`, for logging). :meth:`end_epoch` sets
    ``w = (mean loc + mean cls) / mean loc`` over the recorded iterations and starts a new epoch
    (the released code did this every 3665 iterations, one COCO epoch at batch 32).
    The weight and the running sums live in buffers, so they are saved in ``state_dict``.
    """

    def __init__(
        self,
        delta: float = 1.0,
        initial_weight: float = 50.0,
        eps: float = ALRP_EPS,
        loss_weight: float = 1.0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.delta = check_nonnegative_scalar(delta, "delta")
        self.eps = check_nonnegative_scalar(eps, "eps")
        self.loss_weight = float(loss_weight)
        self.distributed = distributed
        self.self_balance = SelfBalance(initial_weight, distributed=distributed)
        self.last_components: ALRPLossOutput | None = None

    @property
    def weight(self) -> float:
        """Current self-balance weight ``w`` of the localisation component."""
        return self.self_balance.current

    def forward(self, logits: Tensor, targets: Tensor, loc_errors: Tensor) -> Tensor:
        cls, loc = alrp_loss(logits, targets, loc_errors, delta=self.delta, eps=self.eps,
                             distributed=self.distributed)
        if self.training:
            self.self_balance.record(cls, loc)
        self.last_components = ALRPLossOutput(cls.detach(), loc.detach())
        return self.loss_weight * (cls + self.self_balance.weight.to(loc.dtype) * loc)

    def end_epoch(self) -> float:
        """Update ``w`` from this epoch's means (no-op if nothing was recorded); returns ``w``."""
        return self.self_balance.end_epoch()

    def extra_repr(self) -> str:
        return f"delta={self.delta}, weight={self.weight:.4g}, loss_weight={self.loss_weight}"
