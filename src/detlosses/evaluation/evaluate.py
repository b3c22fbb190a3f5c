"""One-call detection evaluation (COCO AP + optimal LRP) and its JSON output.

:func:`evaluate_detections` validates the input once, runs COCO AP (:mod:`detlosses.evaluation.coco`)
and the COCO-style matching at IoU 0.5 behind optimal LRP (:mod:`detlosses.evaluation.matching`,
:mod:`detlosses.evaluation.lrp`), and returns a flat, JSON-ready metrics dict:

* ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``: COCO AP (fractions; higher is better);
* ``oLRP``, ``oLRP_loc``, ``oLRP_FP``, ``oLRP_FN``: the class means moLRP, moLRP_loc, moLRP_FP,
  moLRP_FN (fractions; lower is better);
* ``num_images``, ``num_gt`` (non-crowd ground truths), ``num_detections``;
* ``per_class``: ``name -> {category_id, n_gt, AP, AP50, oLRP, oLRP_loc, oLRP_FP, oLRP_FN,
  lrp_threshold, n_tp, n_fp, n_fn}``.

Undefined values are NaN (written as ``null`` by :func:`write_metrics_json`); see the conventions of
:mod:`detlosses.evaluation.coco` and :mod:`detlosses.evaluation.lrp`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from .._atomic import atomic_write_text
from .coco import COCO_SUMMARY_KEYS, coco_ap
from .inputs import DetectionArrays, DetectionsLike, parse_detections, parse_ground_truth
from .lrp import LRPResult, optimal_lrp
from .matching import MatchResult, match_detections

__all__ = [
    "EvaluationDetails",
    "LRP_SUMMARY_KEYS",
    "evaluate_detections",
    "to_jsonable",
    "write_metrics_json",
]

LRP_SUMMARY_KEYS: tuple[str, ...] = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")


@dataclass(frozen=True)
class EvaluationDetails:
    """Everything behind the flat metrics, for plots and reports.

    Attributes:
        coco: the full :func:`~detlosses.evaluation.coco.coco_ap` result (with the precision–recall
            arrays at IoU 0.5).
        matches: the matching at IoU ``tau`` (score vs IoU of true positives, TP/FP flags per class).
        lrp: the optimal-LRP result (per-class curves can be recomputed with
            :func:`~detlosses.evaluation.lrp.lrp_curve` from ``matches``).
    """

    coco: dict[str, Any]
    matches: MatchResult
    lrp: LRPResult


@overload
def evaluate_detections(
    gt: Mapping[str, Any],
    detections: DetectionsLike | DetectionArrays,
    *,
    tau: float = ...,
    max_dets: int = ...,
    return_details: Literal[False] = ...,
) -> dict[str, Any]: ...


@overload
def evaluate_detections(
    gt: Mapping[str, Any],
    detections: DetectionsLike | DetectionArrays,
    *,
    tau: float = ...,
    max_dets: int = ...,
    return_details: Literal[True],
) -> tuple[dict[str, Any], EvaluationDetails]: ...


def evaluate_detections(
    gt: Mapping[str, Any],
    detections: DetectionsLike | DetectionArrays,
    *,
    tau: float = 0.5,
    max_dets: int = 100,
    return_details: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], EvaluationDetails]:
    """COCO AP and optimal LRP of ``detections`` against ``gt`` as one flat metrics dict.

    Args:
        gt: COCO ground-truth dict.
        detections: COCO results (list of ``{"image_id", "category_id", "bbox", "score"}`` dicts, or an
            ``(N, 7)`` array ``[image_id, x, y, w, h, score, category_id]``).
        tau: IoU threshold of the LRP matching.
        max_dets: detections kept per image and class for LRP (COCO AP always uses 100).
        return_details: also return :class:`EvaluationDetails` (matching, LRP, PR curves).

    Returns:
        The metrics dict (see module docstring), or ``(metrics, details)``.

    Raises:
        ValueError: on invalid input, naming the offending record and field.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    ground_truth = parse_ground_truth(gt)
    dets = parse_detections(detections, ground_truth)
    coco = coco_ap(ground_truth, dets)
    matches = match_detections(ground_truth, dets, iou_threshold=tau, max_dets=max_dets)
    lrp = optimal_lrp(matches)

    metrics: dict[str, Any] = {key: coco[key] for key in COCO_SUMMARY_KEYS}
    metrics.update(
        oLRP=lrp.molrp,
        oLRP_loc=lrp.molrp_loc,
        oLRP_FP=lrp.molrp_fp,
        oLRP_FN=lrp.molrp_fn,
        num_images=int(ground_truth.image_ids.shape[0]),
        num_gt=int(np.count_nonzero(~ground_truth.iscrowd)),
        num_detections=len(dets),
    )
    per_class: dict[str, dict[str, Any]] = {}
    for category_id, c in lrp.per_class.items():
        per_class[c.name] = {
            "category_id": category_id,
            "n_gt": c.n_gt,
            "AP": coco["per_category"][c.name],
            "AP50": coco["per_category_AP50"][c.name],
            "oLRP": c.olrp,
            "oLRP_loc": c.loc,
            "oLRP_FP": c.fp,
            "oLRP_FN": c.fn,
            "lrp_threshold": c.threshold,
            "n_tp": c.n_tp,
            "n_fp": c.n_fp,
            "n_fn": c.n_fn,
        }
    metrics["per_class"] = per_class
    if return_details:
        return metrics, EvaluationDetails(coco=coco, matches=matches, lrp=lrp)
    return metrics


def to_jsonable(value: Any) -> Any:
    """Recursively convert to JSON types: NaN/inf -> None, numpy scalars/arrays -> Python, paths -> str."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"cannot write a value of type {type(value).__name__} to JSON: {value!r}")


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``metrics`` as indented JSON atomically (temp file in the same folder + ``os.replace``).

    NaN and infinities are written as ``null``; numpy values become plain JSON. Parent folders are
    created. Returns the path written.
    """
    return atomic_write_text(path, json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n")
