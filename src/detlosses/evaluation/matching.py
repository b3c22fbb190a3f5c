"""COCO-style greedy matching of detections to ground truth at a single IoU threshold.

This reproduces, for one IoU threshold and one area range, the per-image matching of the COCO evaluator
(``COCOeval.evaluateImg`` in pycocotools; ``MatchDetectionsToGroundTruth`` in faster-coco-eval's C++):

1. Per image and category, detections are sorted by score, descending, with a *stable* sort (ties keep
   their input order) and only the first ``max_dets`` are kept.
2. A ground truth is *ignored* if it is a crowd region (``iscrowd = 1``) or its ``area`` lies outside
   ``area_range``; ground truths are stably reordered so that regular ones come first.
3. Each detection, in score order, is matched to the available ground truth with the highest IoU
   ``>= min(threshold, 1 - 1e-10)``; among equal IoUs the *last* ground truth (in that order) wins, as in
   COCO's ``>=`` comparison. A regular ground truth can be matched once; crowd regions any number of
   times. Ignored ground truths are only considered when no regular one qualifies.
4. A detection matched to a regular ground truth is a true positive (TP); one matched to an ignored
   ground truth is *ignored* (neither TP nor FP), as is an unmatched detection whose area ``w * h`` lies
   outside ``area_range``; every other detection is a false positive (FP).

Per category the detections of all images are then concatenated in increasing image-id order and stably
sorted by score, descending, which is the order COCO's ``accumulate`` uses for precision–recall curves
and the order in which LRP (:mod:`detlosses.evaluation.lrp`) sweeps its score cut-offs.

IoU is computed by :func:`detlosses.evaluation.iou.coco_box_iou` (float64, COCO's formula).

Why not faster-coco-eval's own matches (checked with faster-coco-eval 1.8): its per-image results
(``evalImgs``: each detection's match, ignore flag and kept/truncated status) stay in C++ ("a
datastructure that isn't readable from Python"); with ``extra_calc=True`` it exposes only
``eval["matched"]``, a dict of (detection id, ground-truth id) -> IoU pairs. At the default ten IoU
thresholds those pairs merge every threshold (a ground truth matched at 0.5 by one detection and at
0.85 by another appears twice). Run a second time with ``iouThrs=[0.5]`` the pairs are exactly ours
(``tests/evaluation/test_eval_matching.py`` checks it, IoUs bit-identical, crowd matches included),
so the tie and crowd rules do not differ — but the pairs alone do not feed LRP: it also needs which
detections were kept (``maxDets`` per image and category), which are ignored (matched to a crowd or
out-of-range ground truth), the number of non-ignored ground truths and the score order, none of
which the pairs carry. Feeding LRP from faster-coco-eval would take a second full evaluation pass
and re-deriving those rules here anyway, so this module keeps the matching (about 150 lines of it
are the matching proper) and the test pins it to faster-coco-eval's pairs and precision curves.

Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the pycocotools
``cocoeval.py`` implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import (
    DetectionArrays,
    DetectionsLike,
    GroundTruth,
    parse_detections,
    parse_ground_truth,
)
from .iou import coco_box_iou

__all__ = ["ALL_AREAS", "CategoryMatches", "MatchResult", "greedy_match", "match_detections"]

ALL_AREAS: tuple[float, float] = (0.0, 1e5**2)
"""COCO's ``areaRng`` for ``'all'``."""


@dataclass(frozen=True)
class CategoryMatches:
    """Matching outcome of one category, over its kept detections of all images.

    Arrays are aligned and ordered by score, descending (stable; ties ordered by image id, then by the
    per-image stable order, i.e. input order).

    Attributes:
        category_id: the COCO category id.
        n_gt: number of non-ignored ground truths of the category (over all images).
        scores: ``(D,)`` float64 detection scores.
        image_ids: ``(D,)`` int64.
        is_tp: ``(D,)`` bool, matched to a non-ignored ground truth.
        is_ignored: ``(D,)`` bool, matched to an ignored ground truth (crowd / out of area range) or
            unmatched with an area outside the area range; neither TP nor FP.
        ious: ``(D,)`` float64 IoU with the matched ground truth; NaN for unmatched detections.
        gt_ids: ``(D,)`` int64 original annotation id of the matched ground truth, -1 if unmatched.
        detection_indices: ``(D,)`` int64 index of each detection in the input detection list.
    """

    category_id: int
    n_gt: int
    scores: np.ndarray
    image_ids: np.ndarray
    is_tp: np.ndarray
    is_ignored: np.ndarray
    ious: np.ndarray
    gt_ids: np.ndarray
    detection_indices: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def is_fp(self) -> np.ndarray:
        """``(D,)`` bool, neither a true positive nor ignored."""
        return ~self.is_tp & ~self.is_ignored

    @property
    def n_tp(self) -> int:
        return int(self.is_tp.sum())

    @property
    def n_fp(self) -> int:
        return int(self.is_fp.sum())


@dataclass(frozen=True)
class MatchResult:
    """Matching of all categories of a ground truth at one IoU threshold.

    Attributes:
        iou_threshold: the IoU threshold used.
        max_dets: maximum detections kept per image and category.
        area_range: ``(min, max)`` area range (inclusive) of non-ignored objects.
        categories: ``category id -> CategoryMatches`` for every ground-truth category, in increasing
            id order (categories without detections or ground truth have empty arrays / ``n_gt = 0``).
        category_names: ``category id -> name``.
    """

    iou_threshold: float
    max_dets: int
    area_range: tuple[float, float]
    categories: dict[int, CategoryMatches]
    category_names: dict[int, str]

    def by_name(self, name: str) -> CategoryMatches:
        """The :class:`CategoryMatches` of the category called ``name``."""
        for category_id, category_name in self.category_names.items():
            if category_name == name:
                return self.categories[category_id]
        raise ValueError(f"unknown category name {name!r}; known: {sorted(self.category_names.values())}")


def _last_argmax(values: np.ndarray) -> int:
    """Index of the last maximum of a non-empty 1-D array."""
    return int(values.shape[0] - 1 - np.argmax(values[::-1]))


def greedy_match(
    ious: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """COCO greedy matching of score-sorted detections of one image and category.

    Args:
        ious: ``(D, G)`` IoU matrix, detections already sorted by score descending.
        gt_ignore: ``(G,)`` bool, ignored ground truths.
        gt_crowd: ``(G,)`` bool, crowd ground truths (may be matched repeatedly).
        iou_threshold: minimum IoU of a match.

    Returns:
        ``(D,)`` int64 index (into the ``G`` ground truths, original order) of each detection's match, or
        -1 when unmatched.
    """
    num_dt, num_gt = ious.shape
    match = np.full(num_dt, -1, dtype=np.int64)
    if num_dt == 0 or num_gt == 0:
        return match
    gt_order = np.argsort(gt_ignore, kind="stable")  # regular ground truths first, as COCO sorts them
    ious = ious[:, gt_order]
    crowd = np.asarray(gt_crowd, dtype=bool)[gt_order]
    num_regular = int(np.count_nonzero(~np.asarray(gt_ignore, dtype=bool)))
    threshold = min(float(iou_threshold), 1.0 - 1e-10)
    taken = np.zeros(num_gt, dtype=bool)
    # A detection without any IoU >= threshold can never match: only visit the others, in order.
    for d in np.flatnonzero(ious.max(axis=1) >= threshold).tolist():
        available = ~taken | crowd
        candidates = np.where(available, ious[d], -np.inf)
        best = -1
        for start, stop in ((0, num_regular), (num_regular, num_gt)):
            if stop > start:
                j = start + _last_argmax(candidates[start:stop])
                if candidates[j] >= threshold:
                    best = j
                    break
        if best >= 0:
            taken[best] = True
            match[d] = gt_order[best]
    return match


def _group_bounds(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop indices of runs of equal key tuples in already-sorted key arrays."""
    n = keys[0].shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    stops = np.append(starts[1:], n)
    return starts, stops


def match_detections(
    gt: Mapping[str, Any] | GroundTruth,
    detections: DetectionsLike | DetectionArrays,
    *,
    iou_threshold: float = 0.5,
    max_dets: int = 100,
    area_range: tuple[float, float] = ALL_AREAS,
) -> MatchResult:
    """Match detections to ground truth per image and category, COCO style (see module docstring).

    Args:
        gt: COCO ground-truth dict (or a parsed :class:`GroundTruth`).
        detections: COCO results (list of dicts or ``(N, 7)`` array, or :class:`DetectionArrays`).
        iou_threshold: IoU needed for a match, in ``(0, 1]``.
        max_dets: detections kept per image and category (highest scores), ``>= 1``.
        area_range: inclusive ``(min, max)`` area of non-ignored ground truths and detections.

    Returns:
        A :class:`MatchResult` with one :class:`CategoryMatches` per ground-truth category.

    Raises:
        ValueError: on invalid input (see :mod:`detlosses.evaluation.inputs`) or parameters.
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
    lo, hi = (float(v) for v in area_range)
    if not lo <= hi:
        raise ValueError(f"area_range must be (min, max) with min <= max, got {area_range}")
    ground_truth = parse_ground_truth(gt)
    dets = parse_detections(detections, ground_truth)

    # Ground truth grouped by (category, image), input order within a group.
    gt_ignore = ground_truth.iscrowd | (ground_truth.areas < lo) | (ground_truth.areas > hi)
    gt_order = np.lexsort(
        (np.arange(ground_truth.num_annotations), ground_truth.ann_image_ids, ground_truth.ann_category_ids)
    )
    gt_cat = ground_truth.ann_category_ids[gt_order]
    gt_img = ground_truth.ann_image_ids[gt_order]
    gt_groups = {
        (int(gt_cat[a]), int(gt_img[a])): gt_order[a:b]
        for a, b in zip(*_group_bounds(gt_cat, gt_img), strict=True)
    }

    # Detections sorted by (category, image, score desc, input index); keep max_dets per group.
    n = len(dets)
    det_index = np.arange(n, dtype=np.int64)
    order = np.lexsort((det_index, -dets.scores, dets.image_ids, dets.category_ids))
    cat_sorted = dets.category_ids[order]
    img_sorted = dets.image_ids[order]
    starts, stops = _group_bounds(cat_sorted, img_sorted)
    keep = np.zeros(n, dtype=bool)
    matched_gt = np.full(n, -1, dtype=np.int64)  # index into the ground-truth annotations
    matched_iou = np.full(n, np.nan, dtype=np.float64)
    for a, b in zip(starts, stops, strict=True):
        b = min(b, a + max_dets)
        keep[a:b] = True
        gt_idx = gt_groups.get((int(cat_sorted[a]), int(img_sorted[a])))
        if gt_idx is None:
            continue
        dt_idx = order[a:b]
        ious = coco_box_iou(dets.boxes[dt_idx], ground_truth.boxes[gt_idx], ground_truth.iscrowd[gt_idx])
        match = greedy_match(ious, gt_ignore[gt_idx], ground_truth.iscrowd[gt_idx], iou_threshold)
        hit = np.flatnonzero(match >= 0)
        matched_gt[a + hit] = gt_idx[match[hit]]
        matched_iou[a + hit] = ious[hit, match[hit]]

    is_matched = matched_gt >= 0
    match_ignored = np.zeros(n, dtype=bool)
    match_ignored[is_matched] = gt_ignore[matched_gt[is_matched]]
    det_area = dets.boxes[order, 2] * dets.boxes[order, 3]
    is_ignored = match_ignored | (~is_matched & ((det_area < lo) | (det_area > hi)))
    is_tp = is_matched & ~match_ignored
    gt_ids = np.full(n, -1, dtype=np.int64)
    gt_ids[is_matched] = ground_truth.ann_ids[matched_gt[is_matched]]

    n_gt_per_category = {
        int(c): int(np.count_nonzero((ground_truth.ann_category_ids == c) & ~gt_ignore))
        for c in ground_truth.category_ids
    }
    categories: dict[int, CategoryMatches] = {}
    for category_id in ground_truth.category_ids.tolist():
        sel = np.flatnonzero(keep & (cat_sorted == category_id))  # image order, score order within image
        sel = sel[np.argsort(-dets.scores[order[sel]], kind="stable")]
        categories[category_id] = CategoryMatches(
            category_id=category_id,
            n_gt=n_gt_per_category[category_id],
            scores=dets.scores[order[sel]],
            image_ids=img_sorted[sel],
            is_tp=is_tp[sel],
            is_ignored=is_ignored[sel],
            ious=matched_iou[sel],
            gt_ids=gt_ids[sel],
            detection_indices=order[sel],
        )
    return MatchResult(
        iou_threshold=float(iou_threshold),
        max_dets=int(max_dets),
        area_range=(lo, hi),
        categories=categories,
        category_names=dict(ground_truth.category_names),
    )
