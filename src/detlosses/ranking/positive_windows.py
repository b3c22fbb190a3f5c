"""The positives of a batch as queries against every logit of the batch.

AP-Loss, aLRP Loss and Rank & Sort Loss all start from the same quantities (Chen et al.,
CVPR 2019; Oksuz et al., NeurIPS 2020 / ICCV 2021), for each positive ``i``:

* ``N_FP(i) = sum_{j in N} H(s_j - s_i)``        (negatives ranked above ``i``),
* ``sum_{k in P} w_k H(s_k - s_i)``               (positives ranked above ``i``, self included),

and, for the gradient, ``sum_i c_i H(s_j - s_i)`` for every negative ``j``. This class buckets
the whole flattened batch once against the positives' windows and answers all of them exactly
(:class:`~detlosses.ranking.windows.SortedWindows`).
"""

from __future__ import annotations

from torch import Tensor

from .kernels import PiecewisePolynomialKernel
from .windows import SortedWindows

__all__ = ["PositiveWindows"]


class PositiveWindows:
    """Bucketing of one batch against the windows of its positives.

    Args:
        scores: ``(N,)`` flattened scores in the working dtype (detached).
        positive_index: ``(P,)`` positions of the positives (``P >= 1``).
        negative_mask: ``(N,)`` bool, the negatives (ignored entries are neither).
        kernel: the ranking kernel ``H``.
    """

    def __init__(
        self, scores: Tensor, positive_index: Tensor, negative_mask: Tensor, kernel: PiecewisePolynomialKernel
    ) -> None:
        self.scores = scores
        self.kernel = kernel
        self.positive_index = positive_index
        self.positive_scores = scores[positive_index]
        self.windows = SortedWindows.for_kernel(self.positive_scores, kernel)
        buckets = self.windows.bucketize(scores)
        self.positives = self.windows.points(buckets[positive_index], self.positive_scores)
        self.negatives = self.windows.points(
            buckets.masked_fill_(~negative_mask, self.windows.dump_bucket), scores
        )

    @property
    def num_positives(self) -> int:
        return int(self.positive_index.numel())

    @property
    def self_term(self) -> float:
        """``H(0)``: a positive's own contribution to a positive sum."""
        return self.kernel.value_at(0.0)

    def false_positive_counts(self) -> Tensor:
        """``N_FP(i) = sum_{j in N} H(s_j - s_i)``, float64 ``(P,)``."""
        return self.windows.query_sums(self.negatives, [self.kernel])[0]

    def positive_sums(self, weights: Tensor | None = None) -> Tensor:
        """``sum_{k in P} w_k H(s_k - s_i)`` over all positives, self included; float64 ``(P,)``."""
        return self.windows.query_sums(self.positives, [self.kernel], weights=weights)[0]

    def negative_gradient(self, coefficients: Tensor) -> Tensor:
        """``sum_i c_i H(s_j - s_i)`` for every negative ``j``, 0 for the other entries; ``(N,)``."""
        return self.windows.point_sums(self.negatives, self.kernel, coefficients)
