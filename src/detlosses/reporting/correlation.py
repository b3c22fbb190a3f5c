"""Correlation between classification score and localisation quality of true positives.

The IoU-balanced losses (Wu, Wang, Wang, "IoU-balanced loss functions for single-stage object detection",
Pattern Recognition Letters 2022) start from the observation that a one-stage detector's classification
score is only weakly correlated with the IoU of its box, so NMS and AP reward confident but poorly
localised boxes. This module measures it: Spearman's rank correlation between the score and the IoU of
the true positives of a matching (all classes pooled).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from ..evaluation.evaluate import EvaluationDetails
from ..evaluation.matching import MatchResult

__all__ = ["MIN_TRUE_POSITIVES", "TruePositives", "score_iou_spearman", "true_positives"]

MIN_TRUE_POSITIVES = 3
"""Below this many true positives the correlation is reported as NaN."""


@dataclass(frozen=True)
class TruePositives:
    """Score and IoU of every true positive of a matching, all classes pooled.

    Attributes:
        scores: ``(N,)`` detection scores.
        ious: ``(N,)`` IoU with the matched ground truth.
        category_ids: ``(N,)`` class of each true positive.
        category_names: ``category id -> name`` of the matching.
    """

    scores: np.ndarray
    ious: np.ndarray
    category_ids: np.ndarray
    category_names: dict[int, str]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _as_matches(matches: MatchResult | EvaluationDetails) -> MatchResult:
    if isinstance(matches, EvaluationDetails):
        return matches.matches
    if not isinstance(matches, MatchResult):
        raise TypeError(f"expected a MatchResult or EvaluationDetails, got {type(matches).__name__}")
    return matches


def true_positives(matches: MatchResult | EvaluationDetails) -> TruePositives:
    """Collect the true positives (score, IoU, class) of a matching, in increasing category-id order."""
    result = _as_matches(matches)
    scores, ious, ids = [], [], []
    for category_id, category in result.categories.items():
        tp = category.is_tp & ~category.is_ignored & np.isfinite(category.ious)
        scores.append(category.scores[tp])
        ious.append(category.ious[tp])
        ids.append(np.full(int(tp.sum()), category_id, dtype=np.int64))
    if not scores:
        empty = np.zeros(0, dtype=np.float64)
        return TruePositives(empty, empty.copy(), np.zeros(0, dtype=np.int64), dict(result.category_names))
    return TruePositives(
        scores=np.concatenate(scores).astype(np.float64),
        ious=np.concatenate(ious).astype(np.float64),
        category_ids=np.concatenate(ids),
        category_names=dict(result.category_names),
    )


def score_iou_spearman(matches: MatchResult | EvaluationDetails | TruePositives) -> float:
    """Spearman's rank correlation between score and IoU over all true positives.

    Returns:
        rho in ``[-1, 1]``; NaN with fewer than :data:`MIN_TRUE_POSITIVES` true positives, or when the
        scores or the IoUs are all equal (the rank correlation is then undefined).
    """
    tps = matches if isinstance(matches, TruePositives) else true_positives(matches)
    if len(tps) < MIN_TRUE_POSITIVES:
        return math.nan
    if np.all(tps.scores == tps.scores[0]) or np.all(tps.ious == tps.ious[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's ConstantInputWarning; handled above
        rho = spearmanr(tps.scores, tps.ious).statistic
    return float(rho)
