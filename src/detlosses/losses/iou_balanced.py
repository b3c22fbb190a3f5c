"""IoU-balanced losses (Wu, Li and Wang, "IoU-balanced Loss Functions for Single-stage Object
Detection", arXiv 1908.05641). Released code: ShengkaiWu/IoU-aware-single-stage-object-detector
``mmdet/core/loss/losses.py``.

* Classification: sigmoid focal loss ``FL`` (alpha 0.25, gamma 2) per element; positive elements
  weighted by ``w_i = IoU_i^eta * Z`` with ``Z = sum_pos FL / sum_pos FL IoU^eta``, so the total
  positive loss is unchanged; negatives weight 1; the weights are detached. ``IoU_i`` is the IoU
  of the positive's *predicted* box with its ground truth; ``eta = 1.5``.
* Localisation: smooth-L1 (beta 0.11) on the box deltas times ``IoU^lambda`` (detached),
  ``lambda = 1.5``; ``normalize=True`` (the paper's form) rescales so the total equals plain
  smooth-L1 (the released code used a fixed loss weight, 3.049 for RetinaNet R50, instead).

Both follow mmdetection's reduction: ``reduction="mean"`` (the default) with ``avg_factor`` (the
number of positives, as a detector passes it) divides the sum by it; ``"sum"`` and ``"none"`` as
usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..distributed import resolve_context
from ._precision import full_precision
from ._reduction import check_reduction, weight_reduce_loss
from ._validation import check_same_shape, check_tensor, fused_checks

__all__ = ["iou_balanced_focal_loss", "iou_balanced_smooth_l1_loss", "IoUBalancedFocalLoss",
           "IoUBalancedSmoothL1Loss"]


def _safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), 0.0)


def _broadcast_ious(ious: Tensor, reference: Tensor, name: str) -> Tensor:
    """Accept IoUs with the reference's shape or one per row (``reference.shape[:-1]``)."""
    if ious.shape == reference.shape:
        return ious
    if reference.dim() >= 1 and ious.shape == reference.shape[:-1]:
        return ious[..., None].expand_as(reference)
    raise ValueError(
        f"{name} must have shape {tuple(reference.shape)} or {tuple(reference.shape[:-1])}, got {tuple(ious.shape)}"
    )


@full_precision
def iou_balanced_focal_loss(
    logits: Tensor,
    targets: Tensor,
    ious: Tensor,
    *,
    eta: float = 1.5,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    distributed: bool = False,
) -> Tensor:
    """IoU-balanced sigmoid focal loss.

    Args:
        logits: ``(..., C)`` classification logits.
        targets: same shape, binary (1 positive, 0 negative); ``-1`` marks ignored elements.
        ious: IoU in ``[0, 1]`` of each element's predicted box with its ground truth (used at the
            positives), with the shape of ``logits`` or one per anchor (``logits.shape[:-1]``).
        eta: exponent of the IoU weight.
        alpha, gamma: focal-loss parameters.
        reduction: ``"mean"`` (default; with ``avg_factor``: the sum divided by it), ``"sum"`` or
            ``"none"``.
        weight: optional element weights (multiplied in, e.g. to drop elements).
        distributed: compute the normaliser ``Z`` over every data-parallel rank (opt-in, see
            :mod:`detlosses.distributed`; default: this process alone).
    """
    logits = check_tensor(logits, "logits", floating=True)
    targets = check_tensor(targets, "targets")
    check_same_shape(targets, "targets", logits, "logits")
    given = check_tensor(ious, "ious", floating=True).detach()
    ious = _broadcast_ious(given, logits, "ious")  # one per anchor: a view, no copy
    check_reduction(reduction)
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    t = targets.to(compute_dtype)
    kept = t >= 0  # not ignored
    positive = t == 1
    fused_checks((logits, "logits", "finite"), (t, "targets", "ternary"),
                 (torch.where(positive, ious, 0.5), "ious at the positives", "unit"))
    t = t.clamp_min(0.0)
    focal = sigmoid_focal_loss(logits.to(compute_dtype), t, alpha=alpha, gamma=gamma, reduction="none")
    with torch.no_grad():
        # the IoU weight u^eta on the IoUs as given (one per anchor: C times fewer elements than the
        # logits), finite where the IoUs are not (they matter at the positives only); then viewed
        # at every element, and read at the positives only
        iou_weight = given.to(compute_dtype).clamp(0.0, 1.0).pow_(eta).nan_to_num_(0.0)
        positive_focal = torch.where(positive, focal, 0.0)
        if iou_weight.shape != focal.shape:  # one IoU per anchor: sum over the classes first
            positive_focal = positive_focal.sum(-1)
        context = resolve_context(distributed)
        sums = context.all_reduce_sum(torch.stack([positive_focal.sum(), (positive_focal * iou_weight).sum()])
                                      .to(torch.float64))
        normaliser = _safe_ratio(sums[0], sums[1]).to(compute_dtype)
        scaled = _broadcast_ious(iou_weight.mul_(normaliser), logits, "ious")
        element_weight = torch.where(positive, scaled, kept)  # 1 at the negatives, 0 where ignored
        if weight is not None:
            element_weight = element_weight * weight.to(compute_dtype)
    return weight_reduce_loss(focal, element_weight, reduction, avg_factor)


@full_precision
def iou_balanced_smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    ious: Tensor,
    *,
    lam: float = 1.5,
    beta: float = 0.11,
    normalize: bool = True,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    distributed: bool = False,
) -> Tensor:
    """IoU-balanced smooth-L1 loss on box deltas.

    Args:
        pred, target: ``(M, 4)`` predicted and target deltas of the positives.
        ious: ``(M,)`` (or ``(M, 4)``) IoU in ``[0, 1]`` of each predicted box with its ground truth.
        lam: exponent of the IoU weight.
        beta: smooth-L1 transition point.
        normalize: rescale the weights so the total equals plain smooth-L1 (the paper's form).
        reduction, weight, avg_factor: as in mmdetection.
        distributed: compute the normaliser over every data-parallel rank (opt-in, see
            :mod:`detlosses.distributed`; default: this process alone).
    """
    pred = check_tensor(pred, "pred", floating=True)
    target = check_tensor(target, "target", floating=True)
    check_same_shape(target, "target", pred, "pred")
    ious = _broadcast_ious(check_tensor(ious, "ious", floating=True), pred, "ious")
    fused_checks((pred, "pred", "finite"), (ious, "ious", "unit"))
    check_reduction(reduction)
    compute_dtype = torch.promote_types(pred.dtype, torch.float32)
    loss = F.smooth_l1_loss(pred.to(compute_dtype), target.to(compute_dtype), beta=beta, reduction="none")
    with torch.no_grad():
        element_weight = ious.to(compute_dtype) ** lam
        if weight is not None:
            element_weight = element_weight * weight.to(compute_dtype)
        if normalize:
            base = loss if weight is None else loss * weight.to(compute_dtype)
            sums = resolve_context(distributed).all_reduce_sum(
                torch.stack([base.sum(), (loss * element_weight).sum()]).to(torch.float64)
            )
            element_weight = element_weight * _safe_ratio(sums[0], sums[1]).to(compute_dtype)
    return weight_reduce_loss(loss, element_weight, reduction, avg_factor)


class IoUBalancedFocalLoss(nn.Module):
    """Module form of :func:`iou_balanced_focal_loss` (mmdetection-style ``loss_weight``).

    ``distributed=True`` computes the normaliser ``Z`` over every data-parallel rank (opt-in, as for
    every loss module; default: this process alone).
    """

    def __init__(self, eta: float = 1.5, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean",
                 loss_weight: float = 1.0, distributed: bool = False) -> None:
        super().__init__()
        self.eta, self.alpha, self.gamma = float(eta), float(alpha), float(gamma)
        self.reduction = check_reduction(reduction)
        self.loss_weight = float(loss_weight)
        self.distributed = bool(distributed)

    def forward(self, logits: Tensor, targets: Tensor, ious: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None, reduction_override: str | None = None) -> Tensor:
        return self.loss_weight * iou_balanced_focal_loss(
            logits, targets, ious, eta=self.eta, alpha=self.alpha, gamma=self.gamma,
            reduction=reduction_override or self.reduction, weight=weight, avg_factor=avg_factor,
            distributed=self.distributed,
        )


class IoUBalancedSmoothL1Loss(nn.Module):
    """Module form of :func:`iou_balanced_smooth_l1_loss` (mmdetection-style ``loss_weight``).

    ``distributed=True`` computes the ``normalize`` rescaling over every data-parallel rank (opt-in,
    as for every loss module; default: this process alone).
    """

    def __init__(self, lam: float = 1.5, beta: float = 0.11, normalize: bool = True, reduction: str = "mean",
                 loss_weight: float = 1.0, distributed: bool = False) -> None:
        super().__init__()
        self.lam, self.beta, self.normalize = float(lam), float(beta), bool(normalize)
        self.reduction = check_reduction(reduction)
        self.loss_weight = float(loss_weight)
        self.distributed = bool(distributed)

    def forward(self, pred: Tensor, target: Tensor, ious: Tensor, weight: Tensor | None = None,
                avg_factor: float | Tensor | None = None, reduction_override: str | None = None) -> Tensor:
        return self.loss_weight * iou_balanced_smooth_l1_loss(
            pred, target, ious, lam=self.lam, beta=self.beta, normalize=self.normalize,
            reduction=reduction_override or self.reduction, weight=weight, avg_factor=avg_factor,
            distributed=self.distributed,
        )
