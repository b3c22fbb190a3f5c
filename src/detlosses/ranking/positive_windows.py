"""The positives of a batch as queries against every logit of the batch.

AP-Loss, aLRP Loss and Rank & Sort Loss all start from the same quantities (Chen et al.,
CVPR 2019; Oksuz et al., NeurIPS 2020 / ICCV 2021), for each positive ``i``:

* ``N_FP(i) = sum_{j in N} H(s_j - s_i)``        (negatives ranked above ``i``),
* ``sum_{k in P} w_k H(s_k - s_i)``               (positives ranked above ``i``, self included),

and, for the gradient, ``sum_i c_i H(s_j - s_i)`` for every negative ``j``. This class buckets
the whole flattened batch once against the positives' windows and answers all of them exactly
(:class:`~detlosses.ranking.windows.SortedWindows`).

Under data parallelism (:mod:`.distributed`) the positives are those of *all* ranks (gathered,
rank-ordered), the negatives this rank's own; negative sums are all-reduced per positive.
"""

from __future__ import annotations

from torch import Tensor

from .distributed import DistributedContext
from .kernels import PiecewisePolynomialKernel
from .windows import SortedWindows

__all__ = ["PositiveWindows"]


class PositiveWindows:
    """Bucketing of one batch (or this rank's share) against the windows of all positives.

    Args:
        scores: ``(N,)`` flattened scores in the working dtype (detached).
        positive_index: ``(P_local,)`` positions of this rank's positives.
        negative_mask: ``(N,)`` bool, this rank's negatives (ignored entries are neither).
        kernel: the ranking kernel ``H``.
        context: data-parallel context (default: a single process).
        sizes: positives per rank, if already gathered.
    """

    def __init__(
        self,
        scores: Tensor,
        positive_index: Tensor,
        negative_mask: Tensor,
        kernel: PiecewisePolynomialKernel,
        context: DistributedContext | None = None,
        sizes: list[int] | None = None,
    ) -> None:
        self.context = context or DistributedContext()
        self.scores = scores
        self.kernel = kernel
        self.positive_index = positive_index
        count = int(positive_index.numel())
        self.sizes = sizes if sizes is not None else self.context.gather_sizes(count, scores.device)
        start = self.context.offset(self.sizes)
        self.local = slice(start, start + count)
        self.positive_scores = self.context.all_gather_variable(scores[positive_index], self.sizes)
        self.windows = SortedWindows.for_kernel(self.positive_scores, kernel)
        buckets = self.windows.bucketize(scores)
        self.negatives = self.windows.points(buckets.masked_fill_(~negative_mask, self.windows.dump_bucket), scores)
        self.positives = self.windows.points(self.windows.bucketize(self.positive_scores), self.positive_scores)

    @property
    def num_positives(self) -> int:
        """Positives of the whole (global) batch."""
        return int(sum(self.sizes))

    @property
    def self_term(self) -> float:
        """``H(0)``: a positive's own contribution to a positive sum."""
        return self.kernel.value_at(0.0)

    def gather(self, local_values: Tensor) -> Tensor:
        """Per-positive values of all ranks (rank order), from this rank's ``(P_local,)`` values."""
        return self.context.all_gather_variable(local_values, self.sizes)

    def false_positive_counts(self) -> Tensor:
        """``N_FP(i) = sum_{j in N} H(s_j - s_i)`` over the negatives of every rank, float64 ``(P,)``."""
        local = self.windows.query_sums(self.negatives, [self.kernel])[0]
        return self.context.all_reduce_sum(local)

    def positive_sums(self, weights: Tensor | None = None) -> Tensor:
        """``sum_{k in P} w_k H(s_k - s_i)`` over all positives, self included; float64 ``(P,)``."""
        return self.windows.query_sums(self.positives, [self.kernel], weights=weights)[0]

    def negative_gradient(self, coefficients: Tensor) -> Tensor:
        """``sum_i c_i H(s_j - s_i)`` for every local negative ``j``, 0 for the other entries; ``(N,)``."""
        return self.windows.point_sums(self.negatives, self.kernel, coefficients)
