"""Parameterized AP Loss (Tao et al., "Parameterized AP Loss: A General and Flexible Loss Function
for Object Detection", arXiv 2112.05138, 2021). Released code:
fundamentalvision/Parameterized-AP-Loss ``mmdet/models/losses/paploss.py``.

Candidates ``S`` = every non-ignored entry (``topk=k`` keeps the ``k`` largest logits, the released
memory work-around). ``u_j`` = soft IoU of entry ``j``: the given ``ious`` at positives, 0 elsewhere.
With ``xt_ij = clamp((s_j - s_i) / 2 + 1/2, 0, 1)`` for positive ``i`` and ``j in S`` (self included):

    ``L_i = (1 - I1(u_i)) + I3(u_i) * sum_j H2(xt_ij) (1 - I2(u_j)) / sum_j H1(xt_ij)``,
    ``L = sum_i L_i / |P|``,

with the gradient autograd gives on that formula, ``H1`` detached. ``H1, H2, I1, I2, I3`` are
monotone piecewise-linear maps through control points (:mod:`.pap_params`); with only four
functions ``H1`` is the exact step ``sign(s_j - s_i) / 2 + 1/2``. Boxes are trained only through
``u``; the box-branch gradient is multiplied by ``reg_weight``.

The sums over ``S`` are exact without the ``P x N`` matrix of the released code (the shared ranking
path, :mod:`._ranking`), so ``topk=None`` (every candidate) is affordable. The gradients are
written out (with ``g_i = I3(u_i) / (|P| sum_j H1)`` and ``w_j = 1 - I2(u_j)``):

* a candidate ``j`` as a point: ``w_j sum_i g_i H2'(s_j - s_i)``; a positive ``i`` as a query:
  ``-g_i sum_j w_j H2'(s_j - s_i)``;
* ``u_k``: ``(-I1'(u_k) + I3'(u_k) ratio_k) / |P| - I2'(u_k) sum_i g_i H2(s_k - s_i)``, times
  ``reg_weight``.

At a kink they are the ones autograd gives on the released formula: the left segment at an inner
control point, 0 where ``clamp`` saturates (``s_j - s_i = +-1`` exactly), the first segment at
``u = 0``. If no candidate ranks near or above a positive (``sum_j H1 = 0``: possible with
``topk``, or with a searched ``H1`` that is 0 at ``xt = 1/2``), its ratio term is 0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..distributed import DistributedContext, resolve_context
from ..ranking import HingeKernels, control_point_kernel, square_kernel
from ..ranking.kernels import PiecewisePolynomialKernel
from ._compiler import runs_eagerly
from ._grad_scale import scale_gradient
from ._precision import full_precision
from ._ranking import RankingBatch, RankingGradients, ValueCheck, identity_update, no_positive_values, prepare
from ._validation import check_tensor
from .pap_params import PAPParams, resolve_params

__all__ = ["parameterized_ap_loss", "ParameterizedAPLoss"]

_IDENTITY = ([0.0, 1.0], [0.0, 1.0])
_STEP_HALVES = (  # sign(d) / 2 + 1/2 = [d >= 0] / 2 + [d > 0] / 2
    PiecewisePolynomialKernel((0.0,), ((0.0, 0.0, 0.0), (0.5, 0.0, 0.0)), closed_right=True),
    PiecewisePolynomialKernel((0.0,), ((0.0, 0.0, 0.0), (0.5, 0.0, 0.0)), closed_right=False),
)
_H2, _H2_SLOPE, _H1 = 0, 1, 2  # kernel order in the hinge bank (H1 may be two halves: 2 and 3)


@dataclass(frozen=True)
class _PiecewiseLinear:
    """Several piecewise-linear maps of ``[0, 1]`` through control points, as lines between knots.

    Between two consecutive inner knots of *any* map every map is one line, ``intercept + slope u``.
    ``u`` finds its interval ``(k_{j-1}, k_j]`` as the number of knots strictly below it (one
    ``searchsorted``), which picks the left segment at an inner knot (the released choice) and the
    first one at 0; one look-up then gives every map's line there.
    """

    knots: Tensor  # (U + 1,) the inner knots of all maps, sorted and distinct, then 2.0 (above any u)
    lines: Tensor  # (U + 2, 2, F): per interval, each map's intercept and slope

    @staticmethod
    def of(functions: list[tuple[list[float], list[float]]]) -> _PiecewiseLinear:
        maps = []
        for xs, ys in functions:
            segments = []  # (x_start, intercept, slope) of the segments of positive width
            for k in range(len(xs) - 1):
                if xs[k + 1] > xs[k]:
                    slope = (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])
                    segments.append((xs[k], ys[k] - slope * xs[k], slope))
            maps.append(segments)
        knots = sorted({segment[0] for segments in maps for segment in segments[1:]}) + [2.0]
        lines = []
        for j in range(len(knots) + 1):  # u in (knots[j - 1], knots[j]]
            below = [sum(1 for segment in segments[1:] if j > 0 and segment[0] <= knots[j - 1])
                     for segments in maps]
            chosen = [segments[count] for segments, count in zip(maps, below, strict=True)]
            lines.append([[c[1] for c in chosen], [c[2] for c in chosen]])
        return _PiecewiseLinear(knots=torch.tensor(knots, dtype=torch.float64),
                                lines=torch.tensor(lines, dtype=torch.float64))

    def as_terms(self) -> _PiecewiseLinear:
        """The maps ``(I1, I2, I3)`` as the formula's terms ``(1, 1 - I2, 1 - I1, I3)`` (see
        :meth:`_Form.terms`): the same knots, lines negated exactly where needed."""
        intercepts, slopes = self.lines.unbind(1)  # (U + 2, 3) each
        one = torch.ones_like(intercepts[:, 0])
        intercepts = torch.stack([one, 1.0 - intercepts[:, 1], 1.0 - intercepts[:, 0], intercepts[:, 2]], 1)
        slopes = torch.stack([0.0 * one, -slopes[:, 1], -slopes[:, 0], slopes[:, 2]], 1)
        return _PiecewiseLinear(self.knots, torch.stack([intercepts, slopes], 1))

    def to(self, device: torch.device) -> _PiecewiseLinear:
        return _PiecewiseLinear(self.knots.to(device), self.lines.to(device))

    def __call__(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Values and derivatives ``(P, F)`` at ``u (P,)`` (float64, on this object's device)."""
        intercepts, slopes = self.lines.index_select(0, torch.searchsorted(self.knots, u)).unbind(1)
        return torch.addcmul(intercepts, slopes, u.unsqueeze(1)), slopes


class _Form:
    """The five functions of one loss form, ready for evaluation (the I-functions as the terms the
    formula uses, :meth:`terms`)."""

    def __init__(self, params: PAPParams) -> None:
        self.form = params.form
        if params.form in ("searched", "linear"):
            if params.form == "searched":
                h2 = control_point_kernel(*params.function("H2"))
                h1_points = params.function("H1")
                i_points = [params.function(name) for name in ("I1", "I2", "I3")]
            else:
                h2, h1_points, i_points = control_point_kernel(*_IDENTITY), _IDENTITY, [_IDENTITY] * 3
            h1 = _STEP_HALVES if h1_points is None else (control_point_kernel(*h1_points),)
            self.kernels = HingeKernels.of(h2, h2.derivative(), *h1)
            self_h1 = sum(k.value_at(0.0) for k in h1)
            self.term_functions = _PiecewiseLinear.of(i_points).as_terms()
            self._on_device: dict[torch.device, _PiecewiseLinear] = {torch.device("cpu"): self.term_functions}
        elif params.form == "square":
            h2 = square_kernel()
            self.kernels = HingeKernels.of(h2, h2.derivative(), h2)
            self_h1 = h2.value_at(0.0)
        elif params.form != "sigmoid":  # pragma: no cover - resolve_params rejects other forms
            raise ValueError(f"unknown form {params.form!r}")
        else:
            self.kernels = HingeKernels.of(square_kernel())  # only to bucket; sums are dense
            self_h1 = 0.5  # sigmoid(0)
        #: H1 of a positive against itself (d = 0): without topk every positive is its own
        #: candidate, so a positive value bounds sum_S H1 away from 0 (H1 >= 0)
        self.self_h1 = float(self_h1)
        #: a negative's weight in the H2 sums, ``1 - I2(0)``
        self.negative_weight = self.terms(torch.zeros(1, dtype=torch.float64))[0][0, 1].item()

    def terms(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """The terms ``(1, 1 - I2(u), 1 - I1(u), I3(u))`` and their derivatives, ``(P, 4)`` each:
        the first two are a positive's weights in the sums (``[in S, w]``)."""
        if self.form in ("square", "sigmoid"):
            if self.form == "square":
                value, slope = u * u, 2.0 * u
            else:
                value = torch.sigmoid(2.0 * u - 1.0)
                slope = 2.0 * value * (1.0 - value)
            one = torch.ones_like(u)
            return (torch.stack([one, 1.0 - value, 1.0 - value, value], 1),
                    torch.stack([0.0 * one, -slope, -slope, slope], 1))
        functions = self._on_device.get(u.device)
        if functions is None:
            functions = self._on_device[u.device] = self.term_functions.to(u.device)
        return functions(u)


_FORMS: dict[tuple, _Form] = {}
_FORMS_BY_ID: dict[int, tuple[PAPParams, _Form]] = {}
_FORMS_BY_NAME: dict[str, _Form] = {}


def _form_of(params: str | Tensor | PAPParams) -> _Form:
    """The evaluation-ready form of ``params`` (a preset name, control points or a
    :class:`PAPParams`; checked once, then cached by identity and by value)."""
    if isinstance(params, str) and params in _FORMS_BY_NAME:
        return _FORMS_BY_NAME[params]
    known = _FORMS_BY_ID.get(id(params)) if isinstance(params, PAPParams) else None
    if known is not None and known[0] is params:
        return known[1]
    name = params if isinstance(params, str) else None
    given = params
    params = resolve_params(params)
    points = None if params.control_points is None else tuple(map(tuple, params.control_points.tolist()))
    key = (params.form, points)
    form = _FORMS.get(key)
    if form is None:
        form = _FORMS[key] = _Form(params)
    if name is not None:
        _FORMS_BY_NAME[name] = form
    elif isinstance(given, PAPParams) and len(_FORMS_BY_ID) < 1024:  # keeps them alive: bounded
        _FORMS_BY_ID[id(given)] = (given, form)
    return form


def _window_sums(batch: RankingBatch, weights: Tensor) -> tuple[Tensor, ...]:
    """Per positive: ``H2`` and ``H2'`` sums over the candidate negatives, the same over the
    candidate positives weighted by ``w``, and ``sum_S H1``; ``weights`` ``(P, 2)`` = [in S, w in S]."""
    sums = batch.sums(weights)  # per kernel: negatives, positives in S, positives weighted by w
    h1 = sums[3 * _H1] + sums[3 * _H1 + 1]
    for k in range(_H1 + 1, len(sums) // 3):
        h1 = h1 + sums[3 * k] + sums[3 * k + 1]
    return sums[3 * _H2], sums[3 * _H2_SLOPE], sums[3 * _H2 + 2], sums[3 * _H2_SLOPE + 2], h1


class _DenseSigmoid:
    """The ``sigmoid`` baseline (``H1 = H2 = sigmoid(s_j - s_i)``): dense ``O(P N)`` blocks."""

    def __init__(self, batch: RankingBatch, keep: Tensor) -> None:
        self.queries = batch.positive_scores.to(torch.float64)
        self.points = batch.scores.to(torch.float64)
        self.keep = keep
        rows = max(1, (1 << 22) // max(self.points.numel(), 1))
        self.blocks = [slice(s, min(s + rows, self.queries.numel())) for s in range(0, self.queries.numel(), rows)]

    def _kernels(self, points: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        value = torch.sigmoid(points[None, :] - self.queries[rows, None])
        return value, value * (1.0 - value)

    def query_sums(self, points: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        parts = [torch.stack([k @ weights for k in self._kernels(points, rows)], 1) for rows in self.blocks]
        sums = torch.cat(parts)
        return sums[:, 0], sums[:, 1]

    def adjoint(self, points: Tensor, coefficients: Tensor) -> tuple[Tensor, Tensor]:
        value_sum = slope_sum = 0.0
        for rows in self.blocks:
            value, slope = self._kernels(points, rows)
            value_sum = value_sum + coefficients[rows] @ value
            slope_sum = slope_sum + coefficients[rows] @ slope
        return value_sum, slope_sum


def _pap_formula(form: _Form, candidates: Tensor | None):
    """The soft IoU of all ranks' positives is ``batch.extra`` (float64, detached)."""
    if candidates is None:  # one formula per form: the key of its CUDA graphs
        return _pap_formula_of(form)
    return _formula(form, candidates)


@functools.cache
def _pap_formula_of(form: _Form):
    return _formula(form, None)


def _formula(form: _Form, candidates: Tensor | None):
    def formula(batch: RankingBatch) -> RankingGradients:
        u = batch.extra
        in_s = None if candidates is None else batch.gather(candidates[batch.positive_index].to(u.dtype))
        terms, slopes = form.terms(u)  # (1, 1 - I2, 1 - I1, I3) and their derivatives, (P, 4)
        _, w, keep1, i3 = terms.unbind(1)
        _, minus_d2, minus_d1, d3 = slopes.unbind(1)
        if in_s is None:  # a positive's weights in the sums: [in S, w = 1 - I2] (in S: all)
            weights = terms.narrow(1, 0, 2)
        else:
            w = w * in_s
            weights = torch.stack([in_s, w], 1)
        w_neg = form.negative_weight
        if form.form == "sigmoid":
            dense = _DenseSigmoid(batch, batch.negative_mask if candidates is None else candidates)
            keep = dense.keep & batch.negative_mask
            neg_h, neg_slope = dense.query_sums(dense.points, keep.to(torch.float64))
            neg_h = batch.context.all_reduce_sum(neg_h)
            neg_slope = batch.context.all_reduce_sum(neg_slope)
            pos_h, pos_slope = dense.query_sums(dense.queries, weights[:, 1])
            h1 = neg_h + dense.query_sums(dense.queries, weights[:, 0])[0]
            h2, slope_sum = torch.add(pos_h, neg_h, alpha=w_neg), torch.add(pos_slope, neg_slope, alpha=w_neg)
        else:
            neg_h2, neg_slope, pos_h2, pos_slope, h1 = _window_sums(batch, weights)
            h2, slope_sum = torch.add(pos_h2, neg_h2, alpha=w_neg), torch.add(pos_slope, neg_slope, alpha=w_neg)
        if candidates is None and form.self_h1 > 0:  # sum_S H1 >= H1(0) > 0
            inverse = h1.reciprocal()
        else:  # 1 / H1, 0 where H1 is 0
            inverse = torch.where(h1 > 0, h1.clamp(min=1e-300).reciprocal(), 0.0)
        ratio = h2 * inverse
        per_positive = batch.context.gradient_scale / batch.num_positives
        value = batch.mean(torch.addcmul(keep1, i3, ratio), batch.scores.dtype)
        g = i3 * inverse.mul_(per_positive)
        if form.form == "sigmoid":
            negative_grad = dense.adjoint(dense.points, g)[1].mul_(keep).mul_(w_neg).to(batch.scores.dtype)
            point_value, point_slope = dense.adjoint(dense.queries, g)
        else:  # one table for both kernels (the negatives' sums are the slope's, times w_neg)
            adjoint = batch.adjoint_table(g, (_H2, _H2_SLOPE))
            negative_grad = batch.negative_gradient(adjoint, kernel=_H2_SLOPE, scale=w_neg)
            point_value, point_slope = batch.positive_adjoints(adjoint)  # (_H2, _H2_SLOPE)
        positive_grad = torch.addcmul(w * point_slope, g, slope_sum, value=-1.0)
        # d loss / d u = (I3' ratio - I1') / P - I2' [in S] (sum_i g_i H2(s_l - s_i))
        u_grad = torch.addcmul(minus_d1, d3, ratio).mul_(per_positive)
        u_grad = torch.addcmul(u_grad, minus_d2 if in_s is None else minus_d2 * in_s, point_value)
        return RankingGradients(values=[value], negatives=[negative_grad],
                                positives=[positive_grad], extra=[u_grad])

    # the gradients are the formula's derivatives (autograd's on the released code), written out:
    # they depend on the logits and IoUs themselves, which a second backward would not see
    formula.derivatives_of = "parameterized_ap_loss"
    return formula


def _candidate_mask(targets: Tensor, scores: Tensor, topk: int, context: DistributedContext) -> Tensor:
    valid = targets != -1
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


@runs_eagerly
@full_precision
def parameterized_ap_loss(
    logits: Tensor,
    targets: Tensor,
    ious: Tensor,
    *,
    params: str | Tensor | PAPParams = "retinanet",
    topk: int | None = None,
    reg_weight: float = 1.0,
    distributed: bool = False,
) -> Tensor:
    """Parameterized AP Loss of one batch.

    Args:
        logits: classification logits of any shape, any floating dtype and device.
        targets: same shape; ``1`` positive, ``0`` negative, ``-1`` ignored.
        ious: soft IoU in ``[0, 1]`` of each positive's predicted box with its ground truth (e.g.
            ``(GIoU + 1) / 2``). Either shaped like ``logits`` (the spec's ``u_j``: used where
            ``targets == 1``, other entries ignored and taken as 0), or 1-D with one entry per
            positive, in the order the positives appear in ``targets.flatten()`` (like aLRP Loss's
            ``loc_errors``: no N-sized tensor to fill, nor its gradient). Differentiable: this is
            how the boxes are trained.
        params: a preset (``"retinanet"``, ``"faster_rcnn_rpn"``, ``"faster_rcnn_rcnn"``,
            ``"linear"``, ``"sigmoid"``, ``"square"``), a ``(5, 12)`` / ``(4, 12)`` tensor of control
            points in the order H2, I2, I3, I1[, H1], or a :class:`PAPParams`.
        topk: ``None`` ranks against every candidate (the exact formula); an integer keeps only
            the ``topk`` largest non-ignored logits as candidates (``100000`` is the released cut).
        reg_weight: multiplies the gradient that reaches ``ious`` (the box branch); the searched
            presets come with their own value in ``PAPParams.reg_weight`` (used by
            :class:`ParameterizedAPLoss`).
        distributed: rank the union of all data-parallel ranks' batches (opt-in, see
            :mod:`detlosses.distributed`); ``False``: the given tensors alone. With ``topk`` the
            union's cut is a score threshold, so ties at the cut are all kept.

    Returns:
        Scalar loss (float32, or float64 for float64 logits). No positive: 0, gradients 0.
        Its backward is first order only: with ``create_graph=True`` it raises (the written-out
        derivatives cannot be differentiated again without missing terms).
    """
    ious = check_tensor(ious, "ious", floating=True)
    per_positive = isinstance(logits, Tensor) and ious.shape != logits.shape
    if per_positive and ious.dim() != 1:
        raise ValueError(f"ious must have the shape of logits {tuple(logits.shape)}, or be 1-D with one "
                         f"entry per positive, got {tuple(ious.shape)}")
    if isinstance(logits, Tensor):
        if ious.device != logits.device:
            raise ValueError(f"ious is on {ious.device} but logits is on {logits.device}")
    form = _form_of(params)
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be None or a positive integer, got {topk!r}")
    if not (float(reg_weight) > 0.0 and math.isfinite(float(reg_weight))):
        raise ValueError(f"reg_weight must be a finite number > 0, got {reg_weight}")
    context = resolve_context(distributed)
    flat_ious = ious.reshape(-1)

    def one_iou_per_positive(count: int) -> None:
        if per_positive and ious.numel() != count:
            raise ValueError(
                f"ious has {ious.numel()} entries but targets has {count} positives; give ious shaped "
                f"like logits {tuple(logits.shape)}, or one soft IoU per positive in targets.flatten() order"
            )

    check = (ValueCheck(ious, "ious", "unit") if per_positive else
             ValueCheck(flat_ious, "ious at the positives", "unit", at_positives=True))
    batch = prepare(logits, targets, form.kernels, context, checks=[check], before_windows=one_iou_per_positive)
    if batch is None:
        return no_positive_values(logits, 1)[0] + flat_ious[:0].sum()
    candidates = None if topk is None else _candidate_mask(batch.targets, batch.scores, topk, context)
    batch.graphable = candidates is None and form.form != "sigmoid"  # (a CUDA graph: see ._graphs)
    if candidates is not None:
        batch.negatives = batch.windows.points(batch.scores, keep=candidates & batch.negative_mask,
                                               buckets=batch.negatives.buckets)
    u = ious if per_positive else flat_ious[batch.positive_index]
    if float(reg_weight) != 1.0:
        u = scale_gradient(u, float(reg_weight))
    (loss,) = identity_update(logits, batch, _pap_formula(form, candidates), extra=u)
    return loss


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
        distributed: bool = False,
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
