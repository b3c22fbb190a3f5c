"""Evaluation of object detections: COCO AP (faster-coco-eval) and optimal LRP.

Modules, one concept each:

* :mod:`~detlosses.evaluation.inputs`: validation of COCO ground truth / results into arrays;
* :mod:`~detlosses.evaluation.conversion`: detector outputs (XYXY, scores, labels) -> COCO results;
* :mod:`~detlosses.evaluation.iou`: COCO box IoU (incl. crowd regions);
* :mod:`~detlosses.evaluation.matching`: COCO greedy matching at one IoU threshold;
* :mod:`~detlosses.evaluation.lrp`: LRP, optimal LRP and moLRP (Oksuz et al., ECCV 2018, TPAMI 2021);
* :mod:`~detlosses.evaluation.coco`: COCO AP metrics and precision–recall curves;
* :mod:`~detlosses.evaluation.evaluate`: both in one flat metrics dict, and its atomic JSON writer.
"""

from .coco import COCO_SUMMARY_KEYS, coco_ap
from .conversion import outputs_to_coco_detections, to_coco_detections
from .evaluate import (
    LRP_SUMMARY_KEYS,
    EvaluationDetails,
    evaluate_detections,
    to_jsonable,
    write_metrics_json,
)
from .inputs import (
    DetectionArrays,
    GroundTruth,
    parse_detections,
    parse_ground_truth,
)
from .iou import coco_box_iou
from .lrp import (
    ClassLRP,
    LRPCurve,
    LRPResult,
    compute_lrp,
    lrp_curve,
    lrp_error,
    optimal_lrp,
)
from .matching import CategoryMatches, MatchResult, greedy_match, match_detections

__all__ = [
    "COCO_SUMMARY_KEYS",
    "LRP_SUMMARY_KEYS",
    "CategoryMatches",
    "ClassLRP",
    "DetectionArrays",
    "EvaluationDetails",
    "GroundTruth",
    "LRPCurve",
    "LRPResult",
    "MatchResult",
    "coco_ap",
    "coco_box_iou",
    "compute_lrp",
    "evaluate_detections",
    "greedy_match",
    "lrp_curve",
    "lrp_error",
    "match_detections",
    "optimal_lrp",
    "outputs_to_coco_detections",
    "parse_detections",
    "parse_ground_truth",
    "to_coco_detections",
    "to_jsonable",
    "write_metrics_json",
]
