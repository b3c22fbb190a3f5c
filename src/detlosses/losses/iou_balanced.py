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

The focal loss takes its targets per element (1 positive, 0 negative, -1 ignored) or per anchor
as class indices (``-1`` background, ``-2`` ignored), the cheaper form: its look-ups at the
positives are one gather along the classes, not masks over every element.

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
from ._reduction import avg_factor_checks, check_reduction, reduce_weighted, shaped_weight
from ._validation import IGNORED_LABEL, check_same_shape, check_tensor, class_index_rule, fused_checks

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
        targets: either per element, with the shape of ``logits``: 1 positive, 0 negative, -1
            ignored; or per anchor, as ``F.cross_entropy`` takes class indices: an integer tensor
            of shape ``logits.shape[:-1]`` holding the anchor's class ``c`` in ``[0, C)`` (positive
            for class ``c``, negative for the others), ``-1`` (background: negative for every
            class) or ``-2`` (ignored), the labels of torchvision's matcher and of
            :class:`~detlosses.models.assignment.DenseAssignment`. The per-anchor form costs
            about what plain focal loss costs: the positives are found among the anchors, not
            among the elements.
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
    given = check_tensor(ious, "ious", floating=True).detach()
    check_reduction(reduction)
    weight, weight_checks = shaped_weight(weight, logits, "logits")
    extra_checks = avg_factor_checks(avg_factor, reduction) + weight_checks  # (read with the loss's own)
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    if logits.dim() >= 1 and targets.shape == logits.shape[:-1]:  # one class index per anchor
        focal, element_weight = _per_anchor_form(logits, targets, given, eta, alpha, gamma, compute_dtype,
                                                 resolve_context(distributed), extra_checks)
    else:
        check_same_shape(targets, "targets", logits, "logits")
        focal, element_weight = _per_element_form(logits, targets, given, eta, alpha, gamma, compute_dtype,
                                                  resolve_context(distributed), extra_checks)
    if weight is not None:
        element_weight = element_weight * weight.to(compute_dtype)
    return reduce_weighted(focal, element_weight, reduction, avg_factor)


def _iou_weight(ious: Tensor, eta: float, dtype: torch.dtype) -> Tensor:
    """``u^eta`` (detached), finite where the IoUs are not: they matter at the positives only, and
    are checked there."""
    return ious.to(dtype).clamp(0.0, 1.0).pow_(eta).nan_to_num_(0.0)


def _normalised(iou_weight: Tensor, positive_focal: Tensor, context) -> Tensor:
    """``u^eta Z`` with ``Z = sum_pos FL / sum_pos FL u^eta`` (over every rank under data
    parallelism): the positives' total loss is unchanged. ``positive_focal`` is 0 off the positives."""
    sums = context.all_reduce_sum(torch.stack([positive_focal.sum(), (positive_focal * iou_weight).sum()])
                                  .to(torch.float64))
    return iou_weight.mul_(_safe_ratio(sums[0], sums[1]).to(iou_weight.dtype))


def _per_element_form(logits: Tensor, targets: Tensor, given: Tensor, eta: float, alpha: float, gamma: float,
                      compute_dtype: torch.dtype, context, extra_checks: list) -> tuple[Tensor, Tensor]:
    """Targets 1 / 0 / -1 per element: the focal terms and the (detached) element weights;
    ``extra_checks`` are read back with the loss's own value checks."""
    ious = _broadcast_ious(given, logits, "ious")  # one per anchor: a view, no copy
    t = targets.to(compute_dtype)
    kept = t >= 0  # not ignored
    positive = t == 1
    # one IoU per anchor: checked at the anchors that hold a positive (no pass over the logits' size)
    at_positives = (torch.where(positive.any(-1), given, 0.5) if ious.shape != given.shape
                    else torch.where(positive, ious, 0.5))
    fused_checks((logits, "logits", "finite"), (t, "targets", "ternary"),
                 (at_positives, "ious at the positives", "unit"), *extra_checks)
    focal = sigmoid_focal_loss(logits.to(compute_dtype), t.clamp_min(0.0), alpha=alpha, gamma=gamma,
                               reduction="none")
    with torch.no_grad():
        # the IoU weight on the IoUs as given (one per anchor: C times fewer elements than the
        # logits), then viewed at every element, and read at the positives only
        iou_weight = _iou_weight(given, eta, compute_dtype)
        positive_focal = torch.where(positive, focal, 0.0)
        if iou_weight.shape != focal.shape:  # one IoU per anchor: sum over the classes first
            positive_focal = positive_focal.sum(-1)
        scaled = _broadcast_ious(_normalised(iou_weight, positive_focal, context), logits, "ious")
        element_weight = torch.where(positive, scaled, kept)  # 1 at the negatives, 0 where ignored
    return focal, element_weight


def _per_anchor_form(logits: Tensor, labels: Tensor, given: Tensor, eta: float, alpha: float, gamma: float,
                     compute_dtype: torch.dtype, context, extra_checks: list) -> tuple[Tensor, Tensor]:
    """Class indices per anchor (``-1`` background, ``-2`` ignored): every look-up at the positives
    is a gather along the classes, one element per anchor; the element weights are the anchors'
    (1, or 0 where ignored) with the positives' ``u^eta Z`` scattered in."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"targets of shape {tuple(labels.shape)} (one per anchor) must be integer class indices "
            f"(-1 background, -2 ignored), got {labels.dtype}; per-element targets have the shape of "
            f"logits {tuple(logits.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"targets is on {labels.device} but logits is on {logits.device}")
    if given.shape not in (logits.shape, labels.shape):
        raise ValueError(
            f"ious must have shape {tuple(logits.shape)} or {tuple(labels.shape)}, got {tuple(given.shape)}"
        )
    positive = labels >= 0
    index = labels.clamp(min=0).unsqueeze(-1)  # each anchor's class (0 where none: masked out)
    ious = given if given.shape == labels.shape else given.gather(-1, index).squeeze(-1)
    fused_checks((logits, "logits", "finite"), (labels, "targets", class_index_rule(logits.shape[-1])),
                 (torch.where(positive, ious, 0.5), "ious at the positives", "unit"), *extra_checks)
    positive_value = positive.unsqueeze(-1).to(compute_dtype)
    t = torch.zeros(logits.shape, dtype=compute_dtype, device=logits.device).scatter_(-1, index, positive_value)
    focal = sigmoid_focal_loss(logits.to(compute_dtype), t, alpha=alpha, gamma=gamma, reduction="none")
    with torch.no_grad():
        kept = (labels != IGNORED_LABEL).to(compute_dtype)
        positive_focal = torch.where(positive, focal.gather(-1, index).squeeze(-1), 0.0)
        scaled = _normalised(_iou_weight(ious, eta, compute_dtype), positive_focal, context)
        anchor_weight = torch.where(positive, scaled, kept)  # what goes at each anchor's class
        element_weight = kept.unsqueeze(-1).expand(logits.shape).contiguous()
        element_weight.scatter_(-1, index, anchor_weight.unsqueeze(-1))
    return focal, element_weight


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
    check_reduction(reduction)
    weight, weight_checks = shaped_weight(weight, pred, "pred")
    fused_checks((pred, "pred", "finite"), (ious, "ious", "unit"), *avg_factor_checks(avg_factor, reduction),
                 *weight_checks)
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
    return reduce_weighted(loss, element_weight, reduction, avg_factor)


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
