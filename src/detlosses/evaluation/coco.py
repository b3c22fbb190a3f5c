"""COCO average precision via faster-coco-eval.

COCO AP (Lin et al., ECCV 2014, "Microsoft COCO: Common Objects in Context"; pycocotools): per class,
IoU threshold ``t`` and area range, detections (top 100 per image) are matched greedily in score order;
precision is made monotone, ``p_interp(r) = max_{r' >= r} p(r')``, and sampled at the 101 recall points
``r in {0, 0.01, ..., 1}``:

    AP_c(t) = 1/101 * sum_r p_interp(r),
    AP   = mean over classes with ground truth and t in {0.50, 0.55, ..., 0.95} of AP_c(t),
    AP50 = mean_c AP_c(0.5),  AP75 = mean_c AP_c(0.75),
    APs / APm / APl: AP restricted to objects of area < 32^2, [32^2, 96^2], > 96^2.

The computation is delegated to faster-coco-eval (``COCO``, ``COCOeval_faster``, ``iouType="bbox"``), a
C++ port of pycocotools' evaluator with identical results.

Conventions: values are fractions in ``[0, 1]``; a value COCO reports as ``-1`` (undefined because no
ground truth falls in the class / area range) is returned as NaN. No detections at all gives 0 wherever
ground truth exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from .inputs import (
    DetectionArrays,
    DetectionsLike,
    GroundTruth,
    parse_detections,
    parse_ground_truth,
)

__all__ = ["COCO_SUMMARY_KEYS", "coco_ap"]

COCO_SUMMARY_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")

_STATS_KEYS = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
}


def _silent(*_args: Any, **_kwargs: Any) -> None:
    return None


def _undefined_to_nan(value: float) -> float:
    value = float(value)
    return float("nan") if value < 0 else value


def coco_ap(
    gt: Mapping[str, Any] | GroundTruth,
    detections: DetectionsLike | DetectionArrays,
    *,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO bbox AP metrics of ``detections`` against ``gt``.

    Args:
        gt: COCO ground-truth dict (or a parsed :class:`GroundTruth`).
        detections: COCO results (list of dicts or ``(N, 7)`` array, or :class:`DetectionArrays`).
        verbose: print faster-coco-eval's usual summary table.

    Returns:
        A dict with

        * ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``: floats in ``[0, 1]`` (NaN if undefined);
        * ``per_category``: ``name -> AP@[.5:.95]`` (NaN for a class without ground truth);
        * ``per_category_AP50``: ``name -> AP@0.5``;
        * ``category_ids``, ``category_names``: the ``K`` classes, in the order of the arrays below;
        * ``recall_thresholds``: ``(101,)`` recall points;
        * ``precision_iou50``: ``(K, 101)`` interpolated precision at IoU 0.5, area ``all``, 100
          detections (the per-class precision–recall curve; NaN rows for classes without ground truth);
        * ``scores_iou50``: ``(K, 101)`` detection score at which each recall point is reached.

    Raises:
        ValueError: on invalid input (see :mod:`detlosses.evaluation.inputs`).
    """
    ground_truth = parse_ground_truth(gt)
    dets = parse_detections(detections, ground_truth)
    printer: Callable[..., None] = print if verbose else _silent

    coco_gt = COCO(ground_truth.to_coco_dict(), print_function=printer)
    coco_dt = coco_gt.loadRes(dets.to_coco_results())
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=printer)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict

    params = evaluator.params
    category_ids = [int(c) for c in params.catIds]
    names = [ground_truth.category_names[c] for c in category_ids]
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)  # [T, R, K, A, M]
    scores = np.asarray(evaluator.eval["scores"], dtype=np.float64)
    area_all = params.areaRngLbl.index("all")
    max_dets_index = len(params.maxDets) - 1  # the last setting: 100 detections
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    per_class = precision[:, :, :, area_all, max_dets_index]  # [T, R, K]

    per_category: dict[str, float] = {}
    per_category_ap50: dict[str, float] = {}
    for k, name in enumerate(names):
        values = per_class[:, :, k]
        per_category[name] = float(values.mean()) if (values > -1).all() else float("nan")
        at50 = values[iou50]
        per_category_ap50[name] = float(at50.mean()) if (at50 > -1).all() else float("nan")

    pr50 = per_class[iou50].T.copy()  # [K, R]
    pr50[pr50 < 0] = np.nan
    scores50 = scores[iou50, :, :, area_all, max_dets_index].T.copy()
    scores50[np.isnan(pr50)] = np.nan

    result: dict[str, Any] = {key: _undefined_to_nan(stats[_STATS_KEYS[key]]) for key in COCO_SUMMARY_KEYS}
    result.update(
        per_category=per_category,
        per_category_AP50=per_category_ap50,
        category_ids=category_ids,
        category_names=names,
        recall_thresholds=np.asarray(params.recThrs, dtype=np.float64).copy(),
        precision_iou50=pr50,
        scores_iou50=scores50,
    )
    return result
