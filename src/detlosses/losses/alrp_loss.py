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

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..ranking import IdentityUpdateResult, LogitGradient, identity_update, smoothed_step
from ..ranking.distributed import DistributedContext, attach_local, resolve_context
from ..ranking.positive_windows import PositiveWindows
from ._grad_scale import scale_gradient
from ._precision import full_precision
from ._ranking_common import empty_result, flatten_batch, validate_logits_and_targets
from ._self_balance import SelfBalance
from ._validation import check_finite, check_nonnegative_scalar, check_tensor, check_ternary_targets

__all__ = ["alrp_loss", "ALRPLoss", "ALRPLossOutput"]

ALRP_EPS = 1e-5


def _alrp_computation(targets: Tensor, loc_errors: Tensor, delta: float, eps: float, context: DistributedContext,
                      shared: dict):
    def compute(logits: Tensor, needs_grad: bool) -> IdentityUpdateResult:
        batch = flatten_batch(logits, targets)
        if loc_errors.numel() != batch.num_positives:
            raise ValueError(
                f"loc_errors has {loc_errors.numel()} entries but targets has {batch.num_positives} positives; "
                "give one localisation error per positive, in targets.flatten() order"
            )
        sizes = context.gather_sizes(batch.num_positives, batch.scores.device)
        num_pos = sum(sizes)
        if num_pos == 0:
            empty = torch.zeros(0, dtype=torch.float64, device=batch.scores.device)
            return empty_result(batch, 1, auxiliary=(empty,))
        kernel = smoothed_step(delta)
        windows = PositiveWindows(batch.scores, batch.positive_index, batch.negative_mask, kernel, context, sizes)
        shared.update(scores=windows.positive_scores, local=windows.local)
        errors = windows.gather(loc_errors.to(torch.float64))
        shared["errors"] = errors
        h0 = windows.self_term
        rank_pos = 1.0 + windows.positive_sums() - h0
        false_pos = windows.false_positive_counts()
        rank = rank_pos + false_pos
        value = (1.0 - (rank_pos / rank).mean()).to(batch.scores.dtype)
        if not needs_grad:
            return IdentityUpdateResult([value], [LogitGradient()], auxiliary=(rank,))
        active = false_pos > eps
        weighted_above = windows.positive_sums(errors) - h0 * errors  # sum_{k != i} H(s_k - s_i) e_k
        positive_grad = torch.where(active, -(weighted_above + false_pos) / rank, torch.zeros_like(rank))
        grad_scale = context.gradient_scale / num_pos
        negative_coeff = torch.where(active, -positive_grad / false_pos, torch.zeros_like(rank)) * grad_scale
        negative_grad = windows.negative_gradient(negative_coeff)
        gradient = LogitGradient(
            dense=negative_grad,
            index=batch.positive_index,
            values=(positive_grad * grad_scale)[windows.local].to(negative_grad.dtype),
        )
        return IdentityUpdateResult([value], [gradient], auxiliary=(rank,))

    return compute


class ALRPLossOutput(NamedTuple):
    """The two components of aLRP Loss."""

    classification: Tensor
    localisation: Tensor


@full_precision
def alrp_loss(
    logits: Tensor,
    targets: Tensor,
    loc_errors: Tensor,
    *,
    delta: float = 1.0,
    eps: float = ALRP_EPS,
    distributed: bool | None = None,
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
        distributed: rank the union of all data-parallel ranks' batches (default: whenever
            ``torch.distributed`` is initialised with several ranks); ``False``: this rank alone.

    Returns:
        ``(classification, localisation)``; combine them as ``cls + w * loc`` (see
        :class:`ALRPLoss` for the self-balance weight ``w``). With no positive both are 0.
    """
    logits, targets = validate_logits_and_targets(logits, targets)
    check_ternary_targets(targets)
    loc_errors = check_tensor(loc_errors, "loc_errors", floating=True)
    if loc_errors.dim() != 1:
        raise ValueError(f"loc_errors must be 1-D (one entry per positive), got shape {tuple(loc_errors.shape)}")
    if loc_errors.device != logits.device:
        raise ValueError(f"loc_errors is on {loc_errors.device} but logits is on {logits.device}")
    check_finite(loc_errors, "loc_errors")
    delta = check_nonnegative_scalar(delta, "delta")
    eps = check_nonnegative_scalar(eps, "eps")
    context = resolve_context(distributed)
    shared: dict = {}
    classification, rank = identity_update(
        logits, _alrp_computation(targets.detach(), loc_errors.detach(), delta, eps, context, shared)
    )
    if rank.numel() == 0:
        return ALRPLossOutput(classification, loc_errors.sum() * 0.0)
    errors = loc_errors.to(torch.promote_types(loc_errors.dtype, torch.float32))
    if context.active:  # global order and ranks; gradients reach only this rank's errors
        errors = scale_gradient(errors, context.gradient_scale)
        errors = attach_local(shared["errors"].to(errors.dtype), errors, shared["local"].start)
    localisation = _localisation_component(shared["scores"], errors, rank)
    return ALRPLossOutput(classification, localisation)


def _localisation_component(positive_scores: Tensor, errors: Tensor, rank: Tensor) -> Tensor:
    """``mean_i cumsum(e)_i / rank(i)`` over positives in descending logit order (rank detached)."""
    order = torch.argsort(positive_scores, descending=True, stable=True)
    cumulative = torch.cumsum(errors[order], dim=0)
    return (cumulative / rank[order].to(cumulative.dtype)).mean()


class ALRPLoss(nn.Module):
    """aLRP Loss with the self-balance weight of Oksuz et al. (NeurIPS 2020, Sec. 4.2).

    ``forward`` returns :class:`ALRPLossOutput`-like components plus the combined loss
    ``cls + w * loc`` and records their detached values; :meth:`end_epoch` sets
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
        distributed: bool | None = None,
    ) -> None:
        super().__init__()
        self.delta = check_nonnegative_scalar(delta, "delta")
        self.eps = check_nonnegative_scalar(eps, "eps")
        self.loss_weight = float(loss_weight)
        self.distributed = distributed
        self.self_balance = SelfBalance(initial_weight)

    @property
    def weight(self) -> float:
        """Current self-balance weight ``w`` of the localisation component."""
        return self.self_balance.current

    def forward(self, logits: Tensor, targets: Tensor, loc_errors: Tensor) -> dict[str, Tensor]:
        cls, loc = alrp_loss(logits, targets, loc_errors, delta=self.delta, eps=self.eps,
                             distributed=self.distributed)
        if self.training:
            self.self_balance.record(cls, loc)
        loss = self.loss_weight * (cls + self.self_balance.weight.to(loc.dtype) * loc)
        return {"loss": loss, "loss_cls": cls, "loss_loc": loc}

    def end_epoch(self) -> float:
        """Update ``w`` from this epoch's means (no-op if nothing was recorded); returns ``w``."""
        return self.self_balance.end_epoch()

    def extra_repr(self) -> str:
        return f"delta={self.delta}, weight={self.weight:.4g}, loss_weight={self.loss_weight}"
