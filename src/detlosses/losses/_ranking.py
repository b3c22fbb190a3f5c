"""The one path every ranking loss takes (AP-Loss, aLRP Loss, Rank & Sort Loss, Parameterized AP).

A ranking loss is its per-positive formula and nothing else. This module does the rest, in a fixed
number of tensor operators and a single host read:

1. **Checks and positives** (:func:`prepare`): shapes and dtypes are checked on the host; the value
   checks (NaN/Inf logits, target range, extra per-positive inputs) are reductions stacked with the
   number of positives and read back in *one* transfer — the only one the loss needs, since the
   number of positives sizes everything after it. :func:`~detlosses.losses.set_validate_args`
   turns the value checks off.
2. **The ranking** (:class:`RankingBatch`): the batch flattened over images, anchors and classes
   (one ranking for all of it), the positives of every data-parallel rank (opt-in), and the
   windows of the loss's kernels over them (:mod:`detlosses.ranking.engine`); it answers
   ``sum_{j in N} K(s_j - s_i)``, ``sum_{k in P} w_k K(s_k - s_i)`` and the negatives' adjoint.
3. **The identity update** (:func:`identity_update`): the error-driven losses are not
   differentiated by autograd (Chen et al., CVPR 2019, Sec. 3.2; Oksuz et al., NeurIPS 2020 and
   ICCV 2021): the formula returns its values *and* the gradient of every logit (a dense part over
   the negatives and values at the positives); backward multiplies them by the incoming gradients.
   On CUDA, steps 2 and 3 — everything after the host read — are one CUDA graph (:mod:`._graphs`).

Writing a new ranking loss means writing one function ``formula(batch) -> RankingGradients``
(see :mod:`.ap_loss` for the shortest one), made once per setting (``functools.cache``: the formula
is the key of its graphs), reading per-positive inputs from the batch (``batch.extra``,
``batch.positive_targets``) and reducing over the positives only through :meth:`RankingBatch.mean`,
:meth:`RankingBatch.masked` and the batch's sums — in a graph the batch has padding slots, which
these mask. ``tests/losses/test_static_shapes.py`` runs every formula that way on the CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..distributed import DistributedContext
from ..ranking.engine import AdjointTable, HingeKernels, PointSet, Windows, cpu_fast_paths_enabled, working_dtype
from . import _graphs
from ._validation import check_same_shape, check_tensor, read_with_checks, score_rule, validate_args_enabled

__all__ = [
    "RankingBatch", "RankingGradients", "ValueCheck", "prepare", "identity_update", "no_positive_values", "ranked",
]


@dataclass(frozen=True)
class ValueCheck:
    """A value check fused into the one host read: ``rule`` is ``"finite"`` or ``"unit"`` ([0, 1]);
    ``at_positives``: ``values`` is flat like the targets and only its entries at the positives
    are checked."""

    values: Tensor
    name: str
    rule: str = "finite"
    at_positives: bool = False

    def resolved(self, positive: Tensor | None, positive_index: Tensor | None) -> ValueCheck:
        """The values to check: all of them, or those at the positives (gathered when their
        positions are known, the CPU; else the others replaced by a value that passes)."""
        if not self.at_positives:
            return self
        values = self.values.detach()
        if positive_index is not None:
            values = values[positive_index]
        else:
            values = torch.where(positive, values, 0.5 if self.rule == "unit" else 0.0)
        return ValueCheck(values, self.name, self.rule)


@dataclass
class RankingBatch:
    """One batch (over every data-parallel rank taking part) ready for the ranking sums.

    Per-positive tensors are over the positives of *all* ranks, rank-ordered; :attr:`local` is this
    rank's slice of them, in the order the positives appear in ``targets.flatten()``.

    A *static-shape* batch (what a CUDA graph replays, :mod:`._graphs`) has ``capacity`` positive
    slots instead: the first :attr:`num_positives` are the positives, the rest repeat the first
    positive and are masked out (:attr:`valid`) of every sum, mean and gradient by the methods below.
    A formula that keeps to them (:meth:`masked`, :meth:`mean`, the sums and adjoints, and
    :attr:`num_positives` as a number) is correct either way.
    """

    logits: Tensor  # (N,) flattened, detached, in their own dtype (see scores)
    targets: Tensor | None  # (N,) flattened targets (static shapes: None, see positive_targets)
    positive_index: Tensor  # (P_local,) positions of this rank's positives (static: (capacity,))
    #: (N,) bool, the negatives; ``None`` on the CPU's fast path, which has :attr:`left_out` instead
    #: (:attr:`negative_mask` makes the mask from the targets if a loss asks for it)
    given_negative_mask: Tensor | None
    context: DistributedContext
    sizes: list[int]  # positives per rank
    kernels: HingeKernels
    valid: Tensor | None = None  # static shapes: (capacity,) bool, the slots holding a positive
    count: Tensor | None = None  # static shapes: () float64, the number of positives
    #: the extra per-positive input of :func:`identity_update` (all ranks), float64, detached
    extra: Tensor | None = None
    #: whether the formula may run as a static-shape batch (False once a loss changes the batch)
    graphable: bool = True
    #: the CPU's fast path: ``(M,)`` int64 positions of the entries that are not negatives (the
    #: positives, the ignored), found by one ``nonzero`` of the targets; no ``(N,)`` mask is made
    left_out: Tensor | None = None

    @functools.cached_property
    def negative_mask(self) -> Tensor:
        """``(N,)`` bool: the negatives (``targets == 0``)."""
        return self.targets == 0 if self.given_negative_mask is None else self.given_negative_mask

    @functools.cached_property
    def scores(self) -> Tensor:
        """``(N,)`` the logits in the working dtype (float32 or float64), converted when first asked
        for: a CUDA graph converts them in the copy into its own buffer instead (:mod:`._graphs`)."""
        dtype = working_dtype(self.logits.dtype)
        return self.logits if self.logits.dtype == dtype else self.logits.to(dtype)

    @functools.cached_property
    def positive_targets(self) -> Tensor:
        """``(P_local,)`` targets of this rank's positives (in a static-shape batch: given)."""
        return self.targets[self.positive_index]

    @functools.cached_property
    def positive_scores(self) -> Tensor:
        """``(P,)`` scores of the positives of all ranks."""
        return self.context.all_gather_variable(self.scores[self.positive_index], self.sizes)

    @functools.cached_property
    def windows(self) -> Windows:
        return Windows(self.positive_scores, self.kernels, points=self.scores)

    @functools.cached_property
    def negatives(self) -> PointSet:
        if self.left_out is not None:
            return self.windows.points(self.scores, left_out=self.left_out)
        return self.windows.points(self.scores, keep=self.negative_mask)

    @functools.cached_property
    def positives(self) -> PointSet:
        return self.windows.points(self.positive_scores, keep=self.valid)

    @property
    def num_positives(self) -> int | Tensor:
        """Positives of the whole (global) batch; a 0-dim float64 tensor in a static-shape batch."""
        return int(sum(self.sizes)) if self.count is None else self.count

    @property
    def local(self) -> slice:
        start = self.context.offset(self.sizes)
        return slice(start, start + int(self.positive_index.numel()))

    def gather(self, local_values: Tensor) -> Tensor:
        """Per-positive values of all ranks (rank order) from this rank's ``(P_local, ...)`` values."""
        return self.context.all_gather_variable(local_values, self.sizes)

    def masked(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """``values`` (per positive, ``(P, ...)``) with ``fill`` in the padding slots of a static-shape
        batch; ``values`` itself otherwise (no operator)."""
        if self.valid is None:
            return values
        valid = self.valid if values.dim() == 1 else self.valid.view(-1, *(1,) * (values.dim() - 1))
        return torch.where(valid, values, fill)

    def mean(self, values: Tensor, dtype: torch.dtype) -> Tensor:
        """Mean of a per-positive ``(P,)`` tensor over the positives, in ``dtype``."""
        if self.valid is None:
            return values.mean(dtype=dtype)
        return self.masked(values).sum().div(self.count).to(dtype)

    def sums(self, positive_weights: Tensor | None = None) -> list[Tensor]:
        """Per positive ``i``: ``sum_{j in N} K_k(s_j - s_i)`` and ``sum_{l in P} w_lc K_k(s_l - s_i)``.

        Args:
            positive_weights: ``(P, C)`` weights of the positives (``None``: one channel of ones).

        Returns:
            float64 ``(P,)`` tensors, kernel by kernel: the negatives' sum (every rank's), then one
            per weight channel; e.g. ``[N_FP, rank_pos]`` for one kernel and no weights.
        """
        sums = self.windows.query_sums([(self.negatives, None), (self.positives, positive_weights)])
        if sums.dim() == 2:  # one kernel: (P, C)
            if self.context.active:
                sums = torch.cat([self.context.all_reduce_sum(sums[:, :1]), sums[:, 1:]], 1)
            return list(sums.unbind(1))
        if self.context.active:
            sums = torch.cat([self.context.all_reduce_sum(sums[:, :, :1]), sums[:, :, 1:]], 2)
        return list(sums.reshape(sums.shape[0], -1).unbind(1))

    def adjoint_table(self, coefficients: Tensor, kernels: Sequence[int]) -> AdjointTable:
        """``coefficients`` (per positive) ready for the adjoints of several ``kernels``: pass it to
        :meth:`negative_gradient` and :meth:`positive_adjoint` instead of the coefficients, to build
        the per-bucket table once for all of them."""
        return self.windows.adjoint_table(self.masked(coefficients), kernels)

    def negative_gradient(self, coefficients: Tensor | AdjointTable, kernel: int = 0, scale: float = 1.0) -> Tensor:
        """``scale sum_i c_i K(s_j - s_i)`` for every local negative ``j``, 0 elsewhere; ``(N,)``,
        float64 (float32 for float32 scores on the CPU's fast path)."""
        return self.windows.point_sums(self.negatives, self._coefficients(coefficients), kernel, scale)

    def positive_adjoint(self, coefficients: Tensor | AdjointTable, kernel: int = 0) -> Tensor:
        """``sum_i c_i K(s_l - s_i)`` for every positive ``l`` (all ranks), float64 ``(P,)``."""
        return self.windows.point_sums(self.positives, self._coefficients(coefficients), kernel)

    def positive_adjoints(self, table: AdjointTable) -> tuple[Tensor, ...]:
        """:meth:`positive_adjoint` of every kernel of an :meth:`adjoint_table` at once (one look-up),
        in the table's kernel order."""
        return self.windows.table_point_sums(self.positives, table).unbind(0)

    def _coefficients(self, coefficients: Tensor | AdjointTable) -> Tensor | AdjointTable:
        return coefficients if isinstance(coefficients, AdjointTable) else self.masked(coefficients)


def _fused_checks(flat_logits: Tensor, flat_targets: Tensor, positive: Tensor | None, continuous: bool,
                  checks: Sequence[ValueCheck], kernels: HingeKernels, counted: int | None = None) -> int:
    """Number of positives (``counted``: already known); with validation on, every value check read
    back with it at once (:func:`~._validation.read_with_checks`)."""
    if not validate_args_enabled():
        return int(positive.sum().item()) if counted is None else counted
    # on the CPU a boolean sum copies the mask to int64 first (70 ms at 16e6): count_nonzero there
    count = torch.count_nonzero if flat_logits.device.type == "cpu" else torch.sum
    read = read_with_checks([] if counted is not None else [count(positive)],
                            (flat_logits, "logits", score_rule(kernels.score_limit(flat_logits.dtype))),
                            (flat_targets, "targets", "continuous" if continuous else "ternary"),
                            *((c.values, c.name, c.rule) for c in checks))
    return int(read[0]) if counted is None else counted


def prepare(
    logits: object,
    targets: object,
    kernels: HingeKernels,
    context: DistributedContext,
    *,
    continuous: bool = False,
    checks: Sequence[ValueCheck] = (),
    before_windows: Callable[[int], None] | None = None,
) -> RankingBatch | None:
    """Check the inputs and build the ranking of one batch; ``None`` when no rank has a positive.

    Args:
        logits: classification logits of any shape.
        targets: same shape; ``1``/``0``/``-1`` (``continuous``: ``> 0`` positive, ``0``
            negative, ``< 0`` ignored).
        kernels: the kernels the loss will sum.
        context: the data-parallel context.
        checks: extra value checks to fuse into the host read.
        before_windows: called with this rank's number of positives (e.g. a size check).
    """
    logits = check_tensor(logits, "logits", floating=True)
    targets = check_tensor(targets, "targets")
    check_same_shape(targets, "targets", logits, "logits")
    with torch.no_grad():  # the ranking itself is never differentiated by autograd
        return _prepare(logits, targets, kernels, context, continuous, checks, before_windows)


def _prepare(logits: Tensor, targets: Tensor, kernels: HingeKernels, context: DistributedContext,
             continuous: bool, checks, before_windows) -> RankingBatch | None:
    flat_targets = targets if targets.dim() == 1 else targets.reshape(-1)
    flat_logits = logits if logits.dim() == 1 else logits.reshape(-1)
    positive_index = left_out = positive = negative_mask = None
    if flat_logits.device.type == "cpu" and cpu_fast_paths_enabled():
        # the CPU has no host synchronisation to save: one nonzero of the targets gives the entries
        # that are not negatives (a few percent: the positives, the ignored), the positives among
        # them and their count, with no (N,) mask (nonzero_static after a separate count: 100 ms
        # against 15 at 16e6 on this CPU)
        left_out = flat_targets.nonzero().view(-1)
        flagged = flat_targets.index_select(0, left_out)
        positive_index = left_out[flagged > 0 if continuous else flagged == 1]
    else:
        positive = flat_targets > 0 if continuous else flat_targets == 1
        negative_mask = flat_targets == 0
    count = _fused_checks(flat_logits, flat_targets, positive, continuous,
                          [check.resolved(positive, positive_index) for check in checks], kernels,
                          None if positive_index is None else positive_index.numel())
    if before_windows is not None:
        before_windows(count)
    sizes = context.gather_sizes(count, logits.device)
    if sum(sizes) == 0:
        return None
    if positive_index is None:
        positive_index = torch.nonzero_static(positive, size=count).view(-1)
    # the positives' scores, the windows and the bucketed points are built when a formula first
    # asks for them (RankingBatch's cached properties), or inside a CUDA graph (._graphs)
    return RankingBatch(flat_logits, flat_targets, positive_index, negative_mask, context, sizes, kernels,
                        left_out=left_out)


def no_positive_values(logits: Tensor, count: int) -> tuple[Tensor, ...]:
    """``count`` zero losses, connected to ``logits`` with zero gradients (no positive anywhere)."""
    zero = logits.reshape(-1)[:0].sum(dtype=torch.promote_types(logits.dtype, torch.float32))
    return tuple(zero for _ in range(count))


@dataclass
class RankingGradients:
    """What a ranking formula returns: its values and, per value, the gradient of the logits.

    The gradient of value ``v`` is ``negatives[v]`` (``(N,)`` over the local logits, or ``None``)
    plus ``positives[v]`` (``(P,)`` over the positives of all ranks, or ``None``), already divided
    by the number of positives and scaled for data parallelism.
    """

    values: list[Tensor]
    negatives: list[Tensor | None]
    positives: list[Tensor | None]
    #: per value, the gradient of the extra per-positive input of :func:`identity_update` (``(P,)``)
    extra: list[Tensor | None] = field(default_factory=list)


Gradients = list[tuple[Tensor | None, Tensor | None]]


def ranked(batch: RankingBatch, formula: Callable[[RankingBatch], RankingGradients],
           extra_dtype: torch.dtype | None) -> tuple[list[Tensor], Gradients, list[Tensor | None]]:
    """``formula(batch)`` packaged for the identity update: its values; per value the gradient of
    the local logits as ``(dense (N,), part at the positives)`` in the scores' dtype (a part is
    folded into the dense gradient when there is one); the gradients of the extra input.

    This is all the work after the host read: :mod:`._graphs` captures this function in a CUDA graph.
    """
    result: RankingGradients = formula(batch)
    if batch.context.active:  # this rank's positives
        local = batch.local
        result.extra = [None if g is None else g[local] for g in result.extra]
        result.positives = [None if g is None else g[local] for g in result.positives]
    extra = [None if g is None else g.to(extra_dtype) for g in result.extra]
    gradients = []
    dtype = batch.scores.dtype
    for dense, part in zip(result.negatives, result.positives, strict=True):
        if part is not None:
            part = batch.masked(part)  # static shapes: the padding slots add nothing
        if dense is not None and part is not None:  # add in float64, then one conversion
            if part.dtype != dense.dtype:
                part = part.to(dense.dtype)
            dense = dense.index_put_((batch.positive_index,), part, accumulate=True)
            part = None
        if dense is not None and dense.dtype != dtype:
            dense = dense.to(dtype)
        gradients.append((dense, None if part is None else part.to(dtype)))
    return result.values, gradients, extra


class _IdentityUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, extra: Tensor | None, batch: RankingBatch,  # type: ignore[override]
                formula) -> tuple[Tensor, ...]:
        extra_dtype = None if extra is None else extra.dtype
        captured = _graphs.run(batch, formula, extra)
        if captured is not None:
            values, ctx.gradients, ctx.extra, ctx.index = captured
        else:
            if extra is not None:
                batch.extra = batch.gather(extra.to(torch.float64))  # (autograd is off in here)
            values, ctx.gradients, ctx.extra = ranked(batch, formula, extra_dtype)
            ctx.index = batch.positive_index
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        ctx.numel = logits.numel()
        ctx.derivatives_of = getattr(formula, "derivatives_of", None)
        return tuple(values)

    @staticmethod
    def backward(ctx, *upstream: Tensor):  # type: ignore[override]
        if ctx.derivatives_of is not None and torch.is_grad_enabled():  # create_graph=True
            raise RuntimeError(
                f"{ctx.derivatives_of}: second-order gradients (create_graph=True) are not available: "
                "its first derivatives are written out, and differentiating them again would miss "
                "their own dependence on the logits and inputs (a wrong second derivative). "
                "Backpropagate through it without create_graph=True.")
        total, sparse = None, []
        for grad_out, (dense, part) in zip(upstream, ctx.gradients, strict=False):
            if dense is not None:
                scaled = dense * grad_out
                total = scaled if total is None else total.add_(scaled)
            if part is not None:
                sparse.append(part * grad_out)
        if total is None:
            total = sparse[0].new_zeros(ctx.numel)
        for part in sparse:
            total = total.index_add_(0, ctx.index, part)
        extra = None
        for grad_out, grad in zip(upstream, ctx.extra, strict=False):
            if grad is not None:
                extra = grad * grad_out if extra is None else extra + grad * grad_out
        if total.dtype != ctx.logits_dtype:
            total = total.to(ctx.logits_dtype)
        if total.shape != ctx.logits_shape:
            total = total.view(ctx.logits_shape)
        return total, extra, None, None


def identity_update(logits: Tensor, batch: RankingBatch, formula: Callable[[RankingBatch], RankingGradients],
                    extra: Tensor | None = None) -> tuple[Tensor, ...]:
    """Run ``formula(batch)`` with the error-driven backward; returns the values.

    ``extra``: an optional ``(P_local,)`` input per positive that the formula also differentiates
    (aLRP Loss's localisation errors, Parameterized AP Loss's soft IoU): the formula reads it, all
    ranks' and detached, as :attr:`RankingBatch.extra` (float64); its gradient is
    ``RankingGradients.extra``.

    On CUDA, everything ``formula`` does runs as one CUDA graph where it can (:mod:`._graphs`).

    Second order (``create_graph=True``): the gradients are constants of the backward, scaled by
    the incoming gradients, so they are differentiable with respect to whatever scales the values
    (a learnt loss weight) and do not depend on the logits or ``extra``. That is exact for an
    error-driven update (AP, aLRP, Rank & Sort: the update is the rule, not a derivative) and for
    aLRP's localisation part (linear in the errors, ranks detached). A formula whose gradients are
    the derivatives of its value sets ``formula.derivatives_of`` to the loss's name, and a
    second-order backward through it raises instead of missing terms (Parameterized AP Loss).
    """
    return _IdentityUpdate.apply(logits, extra, batch, formula)
