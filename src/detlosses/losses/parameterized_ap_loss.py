"""Parameterized AP Loss (Tao et al., "Parameterized AP Loss: A General and Flexible Loss Function
for Object Detection", arXiv 2112.05138, 2021). Released code:
fundamentalvision/Parameterized-AP-Loss ``mmdet/models/losses/paploss.py``.

Candidates ``S`` = every non-ignored entry (``topk=k`` keeps the ``k`` largest logits, the released
memory work-around). ``u_j`` = soft IoU of entry ``j``: the given ``ious`` at positives, 0 elsewhere.
With ``xt_ij = clamp((s_j - s_i) / 2 + 1/2, 0, 1)`` for positive ``i`` and ``j in S`` (self included):

    ``L_i = (1 - I1(u_i)) + I3(u_i) * sum_j H2(xt_ij) (1 - I2(u_j)) / sum_j H1(xt_ij)``,
    ``L = sum_i L_i / |P|``,

differentiated by autograd with ``H1`` detached. ``H1, H2, I1, I2, I3`` are monotone
piecewise-linear maps through control points (:mod:`.pap_params`); with only four functions
``H1`` is the exact step ``sign(s_j - s_i) / 2 + 1/2``. Boxes are trained only through ``u``; the
box-branch gradient is multiplied by ``reg_weight``.

The sums over ``S`` are evaluated exactly without the ``P x N`` matrix of the released code
(:mod:`detlosses.ranking.kernel_sum`), so ``topk=None`` (every candidate) is affordable. At a kink
the gradient is the one autograd gives on the released formula: the left segment at an inner
control point, 0 where ``clamp`` saturates (``s_j - s_i = +-1`` exactly). If no candidate ranks
near or above a positive (``sum_j H1 = 0``, possible only with ``topk``), its ratio term is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ranking import SortedWindows, control_point_kernel, square_kernel, working_dtype
from ..ranking.distributed import DistributedContext, gather_with_grad, resolve_context, shared_sum, union_sum
from ..ranking.kernel_sum import DenseEvaluator, WindowEvaluator, kernel_sum
from ..ranking.kernels import PiecewisePolynomialKernel
from ._grad_scale import scale_gradient
from ._precision import full_precision
from ._ranking_common import validate_logits_and_targets
from ._validation import (
    check_finite,
    check_same_shape,
    check_tensor,
    check_ternary_targets,
    check_unit_interval,
)
from .pap_params import PAPParams, resolve_params

__all__ = ["parameterized_ap_loss", "ParameterizedAPLoss", "interpolate_control_points"]

_IDENTITY = ([0.0, 1.0], [0.0, 1.0])


def interpolate_control_points(u: Tensor, xs: list[float], ys: list[float]) -> Tensor:
    """Piecewise-linear ``f(u)`` through ``(xs, ys)``, differentiable in ``u``.

    Segment choice as released: ``u in (x_k, x_{k+1}]`` uses segment ``k`` (``u = 0`` the first
    segment that starts at 0).
    """
    x = torch.tensor(xs, dtype=u.dtype, device=u.device)
    y = torch.tensor(ys, dtype=u.dtype, device=u.device)
    index = torch.searchsorted(x, u.detach().contiguous(), right=False) - 1
    zeros_at_start = int((x == 0).sum())
    index = torch.where(u.detach() == 0, torch.full_like(index, zeros_at_start - 1), index)
    index = index.clamp(0, x.numel() - 2)
    x0, x1, y0, y1 = x[index], x[index + 1], y[index], y[index + 1]
    width = x1 - x0
    slope = torch.where(width > 0, (y1 - y0) / torch.where(width > 0, width, torch.ones_like(width)), 0.0)
    return y0 + slope * (u - x0)


class _Form:
    """The five functions of one loss form, ready for evaluation."""

    def __init__(self, params: PAPParams) -> None:
        self.form = params.form
        self.h1_step = False
        if params.form == "searched":
            self.h2 = control_point_kernel(*params.function("H2"))
            h1 = params.function("H1")
            self.h1_step = h1 is None
            self.h1 = None if h1 is None else control_point_kernel(*h1)
            self.i_points = {name: params.function(name) for name in ("I1", "I2", "I3")}
        elif params.form == "linear":
            self.h2 = self.h1 = control_point_kernel(*_IDENTITY)
            self.i_points = {name: _IDENTITY for name in ("I1", "I2", "I3")}
        elif params.form == "square":
            self.h2 = self.h1 = square_kernel()
        elif params.form == "sigmoid":
            self.h2 = self.h1 = None
        else:  # pragma: no cover - resolve_params rejects other forms
            raise ValueError(f"unknown form {params.form!r}")

    def i_function(self, name: str, u: Tensor) -> Tensor:
        if self.form == "square":
            return u * u
        if self.form == "sigmoid":
            return torch.sigmoid(2.0 * u - 1.0)
        return interpolate_control_points(u, *self.i_points[name])


def _candidate_mask(targets: Tensor, scores: Tensor, topk: int | None, context: DistributedContext) -> Tensor:
    valid = targets != -1
    if topk is None:
        return valid
    valid_index = valid.nonzero().squeeze(1)
    if not context.active:
        if valid_index.numel() <= topk:
            return valid
        kept = torch.topk(scores[valid_index], topk, sorted=False).indices
        mask = torch.zeros_like(valid)
        mask[valid_index[kept]] = True
        return mask
    # the k largest of the union: every rank's own k largest, then the union's k-th value
    local_top = torch.topk(scores[valid_index], min(topk, int(valid_index.numel())), sorted=False).values
    sizes = context.gather_sizes(int(local_top.numel()), scores.device)
    if sum(sizes) <= topk:
        return valid
    union_top = context.all_gather_variable(local_top, sizes)
    threshold = torch.topk(union_top, topk, sorted=True).values[-1]
    return valid & (scores >= threshold)


def _step_sums(queries: Tensor, points: Tensor, buckets_mask: Tensor) -> Tensor:
    """``sum_j sign(x_j - q_i) / 2 + 1/2`` over the masked points (the exact-step ``H1``)."""
    total = torch.zeros(queries.numel(), dtype=torch.float64, device=queries.device)
    for closed_right in (True, False):  # [d >= 0] and [d > 0]
        kernel = PiecewisePolynomialKernel((0.0,), ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0)), closed_right)
        windows = SortedWindows.for_kernel(queries, kernel)
        buckets = windows.bucketize(points).masked_fill_(~buckets_mask, windows.dump_bucket)
        total += 0.5 * windows.query_sums(windows.points(buckets, points), [kernel])[0]
    return total


@full_precision
def parameterized_ap_loss(
    logits: Tensor,
    targets: Tensor,
    ious: Tensor,
    *,
    params: str | Tensor | PAPParams = "retinanet",
    topk: int | None = None,
    reg_weight: float = 1.0,
    distributed: bool | None = None,
) -> Tensor:
    """Parameterized AP Loss of one batch.

    Args:
        logits: classification logits of any shape, any floating dtype and device.
        targets: same shape; ``1`` positive, ``0`` negative, ``-1`` ignored.
        ious: same shape; soft IoU in ``[0, 1]`` of each positive's predicted box with its ground
            truth (e.g. ``(GIoU + 1) / 2``), used where ``targets == 1`` (other entries are
            ignored and taken as 0). Differentiable: this is how the boxes are trained.
        params: a preset (``"retinanet"``, ``"faster_rcnn_rpn"``, ``"faster_rcnn_rcnn"``,
            ``"linear"``, ``"sigmoid"``, ``"square"``), a ``(5, 12)`` / ``(4, 12)`` tensor of control
            points in the order H2, I2, I3, I1[, H1], or a :class:`PAPParams`.
        topk: ``None`` ranks against every candidate (the exact formula); an integer keeps only
            the ``topk`` largest non-ignored logits as candidates (``100000`` is the released cut).
        reg_weight: multiplies the gradient that reaches ``ious`` (the box branch); the searched
            presets come with their own value in ``PAPParams.reg_weight`` (used by
            :class:`ParameterizedAPLoss`).
        distributed: rank the union of all data-parallel ranks' batches (default: whenever
            ``torch.distributed`` is initialised with several ranks); ``False``: this rank alone.
            With ``topk`` the union's cut is a score threshold, so ties at the cut are all kept.

    Returns:
        Scalar loss (float32, or float64 for float64 logits). No positive: 0, gradients 0.
    """
    logits, targets = validate_logits_and_targets(logits, targets)
    check_ternary_targets(targets)
    ious = check_tensor(ious, "ious", floating=True)
    check_same_shape(ious, "ious", logits, "logits")
    check_finite(ious, "ious")
    resolved = resolve_params(params)
    if topk is not None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be None or a positive integer, got {topk!r}")
    if not (float(reg_weight) > 0.0 and float(reg_weight) < float("inf")):
        raise ValueError(f"reg_weight must be a finite number > 0, got {reg_weight}")

    context = resolve_context(distributed)
    dtype = working_dtype(logits.dtype)
    flat_logits = logits.reshape(-1).to(dtype)
    flat_targets = targets.detach().reshape(-1)
    positive_index = (flat_targets == 1).nonzero().squeeze(1)
    sizes = context.gather_sizes(int(positive_index.numel()), flat_logits.device)
    num_pos = sum(sizes)
    if num_pos == 0:
        return flat_logits[:0].sum() + ious.reshape(-1)[:0].to(dtype).sum()
    u = ious.reshape(-1)[positive_index].to(dtype)
    check_unit_interval(u, "ious at the positives")
    if float(reg_weight) != 1.0:
        u = scale_gradient(u, float(reg_weight))

    form = _Form(resolved)
    scores = flat_logits.detach()
    # the queries are the positives of every rank; their gradients return to the owner
    queries = gather_with_grad(flat_logits[positive_index], context, sizes)
    query_values = queries.detach()
    candidates = _candidate_mask(flat_targets, scores, topk, context)
    negative_points = candidates & (flat_targets == 0)
    positive_in_s = candidates[positive_index]
    positive_points = positive_index[positive_in_s]
    zero_u = torch.zeros((), dtype=dtype, device=u.device)
    negative_weight = 1.0 - form.i_function("I2", zero_u)  # u = 0 off the positives
    positive_weights = 1.0 - form.i_function("I2", u[positive_in_s])

    if form.form == "sigmoid":
        h2_sum, h1_sum = _sigmoid_sums(flat_logits, queries, query_values, scores, candidates,
                                       positive_index, positive_in_s, negative_weight, positive_weights)
    else:
        h2_sum, h1_sum = _window_sums(form, flat_logits, queries, query_values, scores, negative_points,
                                      positive_points, positive_in_s, negative_weight, positive_weights)
    # this rank's points contributed partial sums: add up every rank's
    h2_sum = shared_sum(h2_sum, context)
    h1_sum = context.all_reduce_sum(h1_sum)
    start = context.offset(sizes)
    local = slice(start, start + int(positive_index.numel()))
    ratio = torch.where(h1_sum > 0, h2_sum / torch.where(h1_sum > 0, h1_sum, 1.0), 0.0)[local]
    per_positive = (1.0 - form.i_function("I1", u)) + form.i_function("I3", u) * ratio
    return union_sum(per_positive.sum(), context) / num_pos


def _window_sums(form, flat_logits, queries, query_values, scores, negative_points, positive_points,
                 positive_in_s, negative_weight, positive_weights):
    h2 = form.h2
    h1 = None if form.h1_step else form.h1
    kernels = [h2] if h1 is None else [h2, h1]
    breakpoints = sorted({b for k in kernels for b in k.breakpoints})
    h2 = h2.refined(breakpoints)
    windows = SortedWindows.for_kernel(query_values, h2)
    negative_buckets = windows.bucketize(scores).masked_fill_(~negative_points, windows.dump_bucket)
    negatives = windows.points(negative_buckets, scores)
    positive_scores = scores[positive_points]
    positives = windows.points(windows.bucketize(positive_scores), positive_scores)
    h2_negatives = kernel_sum(flat_logits, None, queries, WindowEvaluator(windows, negatives, h2))
    h2_positives = kernel_sum(flat_logits[positive_points], positive_weights, queries,
                              WindowEvaluator(windows, positives, h2))
    h2_sum = negative_weight * h2_negatives + h2_positives
    with torch.no_grad():
        if h1 is None:
            point_mask = negative_points.clone()
            point_mask[positive_points] = True
            h1_sum = _step_sums(query_values, scores, point_mask)
        else:
            h1 = h1.refined(breakpoints)
            h1_sum = (windows.query_sums(negatives, [h1])[0] + windows.query_sums(positives, [h1])[0])
    return h2_sum, h1_sum.to(h2_sum.dtype)


def _sigmoid_sums(flat_logits, queries, query_values, scores, candidates, positive_index, positive_in_s,
                  negative_weight, positive_weights):
    candidate_index = candidates.nonzero().squeeze(1)
    weights = negative_weight.expand(candidate_index.numel()).clone()
    slot = torch.searchsorted(candidate_index, positive_index[positive_in_s])
    weights = weights.index_put((slot,), positive_weights)

    def value(d: Tensor) -> Tensor:
        return torch.sigmoid(d)

    def derivative(d: Tensor) -> Tensor:
        s = torch.sigmoid(d)
        return s * (1.0 - s)

    evaluator = DenseEvaluator(query_values, scores[candidate_index], value, derivative)
    h2_sum = kernel_sum(flat_logits[candidate_index], weights, queries, evaluator)
    with torch.no_grad():
        h1_sum = evaluator.query_sums("value", None).to(h2_sum.dtype)
    return h2_sum, h1_sum


class ParameterizedAPLoss(nn.Module):
    """Module form of :func:`parameterized_ap_loss` with a fixed parameter set.

    ``reg_weight=None`` uses the value that comes with the parameters (4.1231 for the released
    RetinaNet set, 1 for the hand-crafted forms). The result is multiplied by ``loss_weight``.
    """

    def __init__(
        self,
        params: str | Tensor | PAPParams = "retinanet",
        topk: int | None = None,
        reg_weight: float | None = None,
        loss_weight: float = 1.0,
        distributed: bool | None = None,
    ) -> None:
        super().__init__()
        self.distributed = distributed
        self.params = resolve_params(params)
        self.topk = topk
        self.reg_weight = float(self.params.reg_weight if reg_weight is None else reg_weight)
        self.loss_weight = float(loss_weight)

    def forward(self, logits: Tensor, targets: Tensor, ious: Tensor) -> Tensor:
        return self.loss_weight * parameterized_ap_loss(
            logits, targets, ious, params=self.params, topk=self.topk, reg_weight=self.reg_weight,
            distributed=self.distributed,
        )

    def extra_repr(self) -> str:
        return f"form={self.params.form}, topk={self.topk}, reg_weight={self.reg_weight}"

