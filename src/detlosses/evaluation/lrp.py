"""Localisation Recall Precision (LRP) error and optimal LRP (oLRP).

References:
    K. Oksuz, B. C. Cam, E. Akbas, S. Kalkan, "Localization Recall Precision (LRP): A New Performance
    Metric for Object Detection", ECCV 2018.
    K. Oksuz, B. C. Cam, S. Kalkan, E. Akbas, "One Metric to Measure them All: Localisation Recall
    Precision (LRP) for Evaluating Visual Detection Tasks", TPAMI 2021.
    Reference implementation: https://github.com/kemaloksuz/LRP-Error

Definition (TPAMI 2021 form). For one class, with IoU threshold ``tau`` (default 0.5), a set of kept
detections greedily matched to the ground truth (:mod:`detlosses.evaluation.matching`) gives ``N_TP``
true positives with IoUs ``IoU_i``, ``N_FP`` false positives and ``N_FN = N_gt - N_TP`` false negatives;

    LRP = ( sum_{i in TP} (1 - IoU_i) / (1 - tau) + N_FP + N_FN ) / ( N_TP + N_FP + N_FN ),

a value in ``[0, 1]``; lower is better (0 = every object found with IoU 1 and nothing else).

Optimal LRP sweeps the class's score threshold. Detections of the class over all images are sorted by
score, descending (the matching order); keeping the top ``k`` detections for each admissible ``k``
(including ``k = 0``) gives one LRP value per cut-off, computed for all cut-offs at once from cumulative
sums (the greedy matching of a score prefix is the prefix of the full matching):

    oLRP = min_k LRP(k).

Conventions of this module (the project's specification):

* **Cut-offs and ties.** A score threshold ``s`` keeps every detection with ``score >= s``, so tied
  detections are kept or dropped together: only cut-offs between distinct scores are evaluated,
  i.e. ``k = 0``, ``k = D`` and every ``k`` with ``score[k-1] > score[k]``.
* **Ignored detections** (matched to a crowd region, or outside the area range) are removed before the
  sweep: they are neither TP nor FP.
* **Ties in LRP.** If several cut-offs reach the minimum (within ``1e-12``), the one keeping the fewest
  detections (highest threshold) is reported, as ``np.argmin`` in the reference code.
* **Components at the optimum** ``k*`` (TPAMI 2021):
  ``oLRP_loc = mean_{TP}(1 - IoU)`` (not divided by ``1 - tau``), ``oLRP_FP = N_FP / (N_TP + N_FP)``,
  ``oLRP_FN = N_FN / N_gt``, and the LRP-optimal threshold = score of the last kept detection.
* **No true positive at the optimum** (no detections, no TP, or TPs that do not lower LRP below 1):
  ``k* = 0``, ``oLRP = 1``, ``oLRP_FN = 1`` and ``oLRP_loc``, ``oLRP_FP`` and the threshold are NaN
  (undefined), as in the reference code. A NaN threshold keeps nothing under ``score >= threshold``.
* **Classes without ground truth** have an undefined LRP: ``oLRP`` and all components are NaN and the
  class is excluded from every mean.
* **Differences from the reference code**, which follow from the specification above: the reference
  evaluates every ``k >= 1`` (splitting score ties) and never ``k = 0``; it therefore agrees with this
  module whenever the optimal LRP is below 1 and its cut-off does not split tied scores.
* **Means (moLRP).** ``moLRP`` and ``moLRP_FN`` average over classes with ground truth;
  ``moLRP_loc`` and ``moLRP_FP`` over those of them with a defined (non-NaN) value. A mean over no class
  is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .inputs import DetectionArrays, DetectionsLike, GroundTruth
from .matching import CategoryMatches, MatchResult, match_detections

__all__ = ["ClassLRP", "LRPCurve", "LRPResult", "compute_lrp", "lrp_curve", "lrp_error", "optimal_lrp"]

_TIE_TOLERANCE = 1e-12


def lrp_error(
    n_tp: np.ndarray | int,
    n_fp: np.ndarray | int,
    n_fn: np.ndarray | int,
    loc_error_sum: np.ndarray | float,
    tau: float = 0.5,
) -> np.ndarray | float:
    """LRP = (loc_error_sum / (1 - tau) + N_FP + N_FN) / (N_TP + N_FP + N_FN), elementwise.

    ``loc_error_sum`` is ``sum_{TP} (1 - IoU)``. The value is NaN where the denominator is 0 (no
    detections and no ground truth).
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (n_tp, n_fp, n_fn))
    numerator = np.asarray(loc_error_sum, dtype=np.float64) / (1.0 - tau) + fp + fn
    denominator = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)
    return float(value) if value.ndim == 0 else value


@dataclass(frozen=True)
class LRPCurve:
    """LRP of one class at every admissible score cut-off, in decreasing threshold order.

    Attributes:
        category_id: the COCO category id.
        n_gt: number of non-ignored ground truths.
        tau: the IoU threshold of the matching.
        scores: ``(D,)`` scores of the non-ignored detections, descending.
        num_kept: ``(C,)`` number ``k`` of detections kept at each cut-off (starts at 0).
        thresholds: ``(C,)`` score threshold of each cut-off (score of the ``k``-th detection; NaN for
            ``k = 0``).
        n_tp, n_fp, n_fn: ``(C,)`` counts at each cut-off.
        loc_error_sum: ``(C,)`` ``sum_{TP} (1 - IoU)`` at each cut-off.
        lrp: ``(C,)`` LRP at each cut-off (NaN where undefined, i.e. ``n_gt = 0`` and ``k = 0``).
    """

    category_id: int
    n_gt: int
    tau: float
    scores: np.ndarray
    num_kept: np.ndarray
    thresholds: np.ndarray
    n_tp: np.ndarray
    n_fp: np.ndarray
    n_fn: np.ndarray
    loc_error_sum: np.ndarray
    lrp: np.ndarray

    def index_at_threshold(self, score_threshold: float) -> int:
        """Index of the cut-off that keeps the detections with ``score >= score_threshold``."""
        if math.isnan(score_threshold):
            return 0
        k = int(np.count_nonzero(self.scores >= score_threshold))
        return int(np.searchsorted(self.num_kept, k))

    def at_threshold(self, score_threshold: float) -> float:
        """LRP when keeping the detections with ``score >= score_threshold`` (the ECCV 2018 LRP)."""
        return float(self.lrp[self.index_at_threshold(score_threshold)])

    def optimal_index(self) -> int:
        """Index of the LRP-optimal cut-off (fewest detections among ties); 0 if LRP is undefined."""
        if self.n_gt == 0:
            return 0
        best = float(np.min(self.lrp))
        return int(np.flatnonzero(self.lrp <= best + _TIE_TOLERANCE)[0])


def lrp_curve(matches: CategoryMatches, tau: float = 0.5) -> LRPCurve:
    """LRP of one class at every admissible cut-off, from its matching (vectorised cumulative sums).

    Args:
        matches: the class's :class:`~detlosses.evaluation.matching.CategoryMatches` at IoU ``tau``.
        tau: the IoU threshold that was used for the matching (TP iff ``IoU >= tau``).
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    keep = ~matches.is_ignored
    scores = matches.scores[keep]
    is_tp = matches.is_tp[keep]
    loc = np.where(is_tp, 1.0 - np.nan_to_num(matches.ious[keep], nan=1.0), 0.0)
    n_det = scores.shape[0]

    cum_tp = np.concatenate(([0], np.cumsum(is_tp, dtype=np.int64)))
    cum_loc = np.concatenate(([0.0], np.cumsum(loc)))
    k = np.arange(n_det + 1, dtype=np.int64)
    # Admissible cut-offs: k = 0, k = D, and k where the k-th and (k+1)-th scores differ.
    admissible = np.ones(n_det + 1, dtype=bool)
    if n_det > 1:
        admissible[1:n_det] = scores[:-1] > scores[1:]
    k = k[admissible]
    n_tp = cum_tp[admissible]
    n_fp = k - n_tp
    n_fn = matches.n_gt - n_tp
    loc_sum = cum_loc[admissible]
    thresholds = np.concatenate(([np.nan], scores))[admissible]
    return LRPCurve(
        category_id=matches.category_id,
        n_gt=matches.n_gt,
        tau=float(tau),
        scores=scores,
        num_kept=k,
        thresholds=thresholds,
        n_tp=n_tp,
        n_fp=n_fp,
        n_fn=n_fn,
        loc_error_sum=loc_sum,
        lrp=np.asarray(lrp_error(n_tp, n_fp, n_fn, loc_sum, tau), dtype=np.float64).reshape(-1),
    )


@dataclass(frozen=True)
class ClassLRP:
    """Optimal LRP of one class and its components at the optimum (NaN where undefined).

    Attributes:
        category_id, name: the class.
        n_gt: non-ignored ground truths.
        olrp: optimal LRP in ``[0, 1]``.
        loc: mean ``1 - IoU`` of the TPs at the optimum.
        fp: ``N_FP / (N_TP + N_FP)`` at the optimum.
        fn: ``N_FN / N_gt`` at the optimum.
        threshold: LRP-optimal score threshold (keep ``score >= threshold``).
        n_tp, n_fp, n_fn: counts at the optimum.
    """

    category_id: int
    name: str
    n_gt: int
    olrp: float
    loc: float
    fp: float
    fn: float
    threshold: float
    n_tp: int
    n_fp: int
    n_fn: int


def _class_lrp(curve: LRPCurve, name: str) -> ClassLRP:
    nan = float("nan")
    if curve.n_gt == 0:
        return ClassLRP(curve.category_id, name, 0, nan, nan, nan, nan, nan, 0, 0, 0)
    i = curve.optimal_index()
    n_tp, n_fp, n_fn = int(curve.n_tp[i]), int(curve.n_fp[i]), int(curve.n_fn[i])
    return ClassLRP(
        category_id=curve.category_id,
        name=name,
        n_gt=curve.n_gt,
        olrp=float(curve.lrp[i]),
        loc=float(curve.loc_error_sum[i] / n_tp) if n_tp > 0 else nan,
        fp=n_fp / (n_tp + n_fp) if n_tp + n_fp > 0 else nan,
        fn=n_fn / curve.n_gt,
        threshold=float(curve.thresholds[i]),
        n_tp=n_tp,
        n_fp=n_fp,
        n_fn=n_fn,
    )


def _mean_defined(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


@dataclass(frozen=True)
class LRPResult:
    """Optimal LRP of every class and the class means (moLRP); lower is better.

    Attributes:
        tau: IoU threshold.
        per_class: ``category id -> ClassLRP`` for every ground-truth category.
        molrp: mean oLRP over classes with ground truth.
        molrp_loc: mean ``oLRP_loc`` over classes with ground truth and a defined ``loc``.
        molrp_fp: mean ``oLRP_FP`` over classes with ground truth and a defined ``fp``.
        molrp_fn: mean ``oLRP_FN`` over classes with ground truth.
    """

    tau: float
    per_class: dict[int, ClassLRP]
    molrp: float
    molrp_loc: float
    molrp_fp: float
    molrp_fn: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view: means plus ``per_class`` keyed by category name."""
        return {
            "tau": self.tau,
            "moLRP": self.molrp,
            "moLRP_loc": self.molrp_loc,
            "moLRP_FP": self.molrp_fp,
            "moLRP_FN": self.molrp_fn,
            "per_class": {c.name: asdict(c) for c in self.per_class.values()},
        }


def optimal_lrp(matches: MatchResult) -> LRPResult:
    """Optimal LRP per class and moLRP from a matching; ``tau`` is the matching's IoU threshold."""
    tau = matches.iou_threshold
    per_class = {
        category_id: _class_lrp(lrp_curve(category, tau), matches.category_names[category_id])
        for category_id, category in matches.categories.items()
    }
    with_gt = [c for c in per_class.values() if c.n_gt > 0]
    return LRPResult(
        tau=tau,
        per_class=per_class,
        molrp=_mean_defined([c.olrp for c in with_gt]),
        molrp_loc=_mean_defined([c.loc for c in with_gt]),
        molrp_fp=_mean_defined([c.fp for c in with_gt]),
        molrp_fn=_mean_defined([c.fn for c in with_gt]),
    )


def compute_lrp(
    gt: Mapping[str, Any] | GroundTruth,
    detections: DetectionsLike | DetectionArrays,
    *,
    tau: float = 0.5,
    max_dets: int = 100,
) -> LRPResult:
    """Match ``detections`` to ``gt`` at IoU ``tau`` (COCO style, ``max_dets`` per image and class) and
    return the optimal LRP of every class and the means."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    return optimal_lrp(match_detections(gt, detections, iou_threshold=tau, max_dets=max_dets))
