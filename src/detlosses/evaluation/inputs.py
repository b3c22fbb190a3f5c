"""Validation and canonical array forms of COCO ground truth and detection results.

Every evaluator in :mod:`detlosses.evaluation` starts here, so malformed input fails once, early, with a
:class:`ValueError` that names the offending record and field, instead of deep inside faster-coco-eval.

Conventions (COCO, Lin et al., ECCV 2014, "Microsoft COCO: Common Objects in Context"):

* boxes are ``[x, y, w, h]`` in pixels with ``w, h >= 0``; areas are ``w * h`` (no ``+1``);
* ground truth is a dict with ``images`` (``id``), ``annotations`` (``id``, ``image_id``,
  ``category_id``, ``bbox``, optional ``area`` defaulting to ``w * h``, optional ``iscrowd`` defaulting
  to 0) and ``categories`` (``id``, ``name``); category ids are arbitrary integers;
* detections are COCO results: a sequence of ``{"image_id", "category_id", "bbox", "score"}`` dicts, or
  an ``(N, 7)`` array with rows ``[image_id, x, y, w, h, score, category_id]`` (the layout of
  ``COCO.loadNumpyAnnotations``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DetectionArrays",
    "DetectionsLike",
    "GroundTruth",
    "parse_detections",
    "parse_ground_truth",
]

DetectionsLike = Sequence[Mapping[str, Any]] | np.ndarray
"""COCO results: detection dicts, or an ``(N, 7)`` array ``[image_id, x, y, w, h, score, category_id]``."""

_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")


def _as_int_id(value: Any, what: str) -> int:
    """Return ``value`` as a Python int, or raise ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _as_box(value: Any, what: str) -> tuple[float, float, float, float]:
    """Validate one ``[x, y, w, h]`` box: four finite numbers with non-negative width and height."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 4:
        raise ValueError(f"{what} bbox must be a sequence of 4 numbers [x, y, w, h], got {value!r}")
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} bbox must contain numbers, got {value!r}") from exc
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"{what} bbox has non-finite coordinates: {value!r}")
    if w < 0:
        raise ValueError(f"{what} bbox has negative width {w} (bbox is [x, y, w, h]): {value!r}")
    if h < 0:
        raise ValueError(f"{what} bbox has negative height {h} (bbox is [x, y, w, h]): {value!r}")
    return x, y, w, h


def _require_keys(record: Any, keys: Sequence[str], what: str) -> None:
    if not isinstance(record, Mapping):
        raise ValueError(f"{what} must be a dict, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise ValueError(f"{what} is missing key {key!r}")


@dataclass(frozen=True)
class GroundTruth:
    """Validated COCO ground truth as parallel arrays (one entry per annotation, in input order).

    Attributes:
        image_ids: sorted unique image ids, ``(I,)`` int64.
        images: the image records (shallow copies), in input order.
        category_ids: sorted category ids, ``(K,)`` int64.
        category_names: ``category id -> name`` (names are unique).
        ann_ids: original annotation ids, ``(G,)`` int64.
        ann_image_ids: ``(G,)`` int64.
        ann_category_ids: ``(G,)`` int64.
        boxes: ``(G, 4)`` float64 ``[x, y, w, h]``.
        areas: ``(G,)`` float64, the annotation's ``area`` (COCO uses it for the area ranges).
        iscrowd: ``(G,)`` bool.
    """

    image_ids: np.ndarray
    images: list[dict[str, Any]]
    category_ids: np.ndarray
    category_names: dict[int, str]
    ann_ids: np.ndarray
    ann_image_ids: np.ndarray
    ann_category_ids: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    iscrowd: np.ndarray

    @property
    def num_annotations(self) -> int:
        return int(self.ann_ids.shape[0])

    def to_coco_dict(self) -> dict[str, Any]:
        """A fresh COCO dict for faster-coco-eval.

        Annotation ids are renumbered ``1..G`` in input order (COCOeval treats id 0 as "unmatched", so
        arbitrary user ids are not safe); ``ann_ids[i]`` is the original id of the annotation numbered
        ``i + 1``.
        """
        annotations = [
            {
                "id": i + 1,
                "image_id": int(self.ann_image_ids[i]),
                "category_id": int(self.ann_category_ids[i]),
                "bbox": [float(v) for v in self.boxes[i]],
                "area": float(self.areas[i]),
                "iscrowd": int(self.iscrowd[i]),
            }
            for i in range(self.num_annotations)
        ]
        images = []
        for image in self.images:
            record = {"id": int(image["id"])}
            for key in ("width", "height", "file_name"):
                if key in image:
                    record[key] = image[key]
            images.append(record)
        categories = [{"id": int(c), "name": self.category_names[int(c)]} for c in self.category_ids]
        return {"images": images, "annotations": annotations, "categories": categories}


@dataclass(frozen=True)
class DetectionArrays:
    """Validated detections as parallel arrays, in input order.

    Attributes:
        image_ids: ``(N,)`` int64.
        category_ids: ``(N,)`` int64.
        boxes: ``(N, 4)`` float64 ``[x, y, w, h]``.
        scores: ``(N,)`` float64, finite.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_coco_results(self) -> list[dict[str, Any]]:
        """Fresh COCO result dicts (faster-coco-eval's ``loadRes`` mutates the dicts it is given)."""
        return [
            {
                "image_id": int(self.image_ids[i]),
                "category_id": int(self.category_ids[i]),
                "bbox": [float(v) for v in self.boxes[i]],
                "score": float(self.scores[i]),
            }
            for i in range(len(self))
        ]


def parse_ground_truth(gt: Mapping[str, Any]) -> GroundTruth:
    """Validate a COCO ground-truth dict and return its :class:`GroundTruth` arrays.

    Raises:
        ValueError: on a missing section or key, duplicate image/annotation/category ids, duplicate
            category names, an annotation referring to an unknown image or category, a malformed box
            (wrong length, non-finite, negative width/height), or a negative/non-finite area.
    """
    if isinstance(gt, GroundTruth):
        return gt
    if not isinstance(gt, Mapping):
        raise ValueError(f"ground truth must be a COCO dict, got {type(gt).__name__}")
    for section in ("images", "annotations", "categories"):
        if section not in gt:
            raise ValueError(f"ground truth is missing the {section!r} list")
        if isinstance(gt[section], (str, bytes, Mapping)) or not isinstance(gt[section], Sequence):
            raise ValueError(f"ground truth {section!r} must be a list")

    images: list[dict[str, Any]] = []
    image_id_set: set[int] = set()
    for i, image in enumerate(gt["images"]):
        _require_keys(image, ("id",), f"ground-truth image {i}")
        image_id = _as_int_id(image["id"], f"ground-truth image {i} id")
        if image_id in image_id_set:
            raise ValueError(f"ground-truth image id {image_id} is duplicated")
        image_id_set.add(image_id)
        images.append({**image, "id": image_id})
    if not images:
        raise ValueError("ground truth has no images; nothing to evaluate")

    category_names: dict[int, str] = {}
    for i, category in enumerate(gt["categories"]):
        _require_keys(category, ("id", "name"), f"ground-truth category {i}")
        category_id = _as_int_id(category["id"], f"ground-truth category {i} id")
        if category_id in category_names:
            raise ValueError(f"ground-truth category id {category_id} is duplicated")
        name = str(category["name"])
        if name in category_names.values():
            raise ValueError(f"ground-truth category name {name!r} is duplicated (names key the results)")
        category_names[category_id] = name

    annotations = gt["annotations"]
    n = len(annotations)
    ann_ids = np.empty(n, dtype=np.int64)
    ann_image_ids = np.empty(n, dtype=np.int64)
    ann_category_ids = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.float64)
    areas = np.empty(n, dtype=np.float64)
    iscrowd = np.empty(n, dtype=bool)
    seen_ids: set[int] = set()
    for i, ann in enumerate(annotations):
        what = f"ground-truth annotation {i}"
        _require_keys(ann, _ANNOTATION_KEYS, what)
        ann_id = _as_int_id(ann["id"], f"{what} id")
        if ann_id in seen_ids:
            raise ValueError(f"ground-truth annotation id {ann_id} is duplicated")
        seen_ids.add(ann_id)
        image_id = _as_int_id(ann["image_id"], f"{what} image_id")
        if image_id not in image_id_set:
            raise ValueError(f"{what} (id {ann_id}) refers to unknown image_id {image_id}")
        category_id = _as_int_id(ann["category_id"], f"{what} category_id")
        if category_id not in category_names:
            raise ValueError(f"{what} (id {ann_id}) refers to unknown category_id {category_id}")
        box = _as_box(ann["bbox"], f"{what} (id {ann_id})")
        area = ann.get("area")
        if area is None:
            area = box[2] * box[3]
        try:
            area = float(area)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} (id {ann_id}) area must be a number, got {ann['area']!r}") from exc
        if not math.isfinite(area) or area < 0:
            raise ValueError(f"{what} (id {ann_id}) has invalid area {area}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            raise ValueError(f"{what} (id {ann_id}) iscrowd must be 0 or 1, got {crowd!r}")
        ann_ids[i] = ann_id
        ann_image_ids[i] = image_id
        ann_category_ids[i] = category_id
        boxes[i] = box
        areas[i] = area
        iscrowd[i] = bool(crowd)

    return GroundTruth(
        image_ids=np.array(sorted(image_id_set), dtype=np.int64),
        images=images,
        category_ids=np.array(sorted(category_names), dtype=np.int64),
        category_names={k: category_names[k] for k in sorted(category_names)},
        ann_ids=ann_ids,
        ann_image_ids=ann_image_ids,
        ann_category_ids=ann_category_ids,
        boxes=boxes,
        areas=areas,
        iscrowd=iscrowd,
    )


def _detections_from_array(array: np.ndarray) -> DetectionArrays:
    if array.ndim != 2 or array.shape[1] != 7:
        raise ValueError(
            f"detection array must have shape (N, 7) [image_id, x, y, w, h, score, category_id], "
            f"got {array.shape}"
        )
    array = np.asarray(array, dtype=np.float64)
    for column, name in ((0, "image_id"), (6, "category_id")):
        values = array[:, column]
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"detection {i} {name} must be an integer, got {values[i]!r}")
    boxes = array[:, 1:5].copy()
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"detection {i} bbox has non-finite coordinates: {boxes[i].tolist()}")
    for column, name in ((2, "width"), (3, "height")):
        bad = boxes[:, column] < 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"detection {i} bbox has negative {name} {boxes[i, column]} (bbox is [x, y, w, h])"
            )
    return DetectionArrays(
        image_ids=array[:, 0].astype(np.int64),
        category_ids=array[:, 6].astype(np.int64),
        boxes=boxes,
        scores=array[:, 5].copy(),
    )


def _detections_from_dicts_fast(detections: Sequence[Mapping[str, Any]]) -> DetectionArrays | None:
    """Columnar conversion of well-formed detections; ``None`` when anything looks off, so that the
    record-by-record path can name the problem."""
    n = len(detections)
    try:
        image_ids = np.array([d["image_id"] for d in detections])
        category_ids = np.array([d["category_id"] for d in detections])
        boxes = np.array([d["bbox"] for d in detections])
        scores = np.array([d["score"] for d in detections])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if (
        n == 0
        or image_ids.dtype.kind not in "iu"
        or category_ids.dtype.kind not in "iu"
        or boxes.dtype.kind not in "iuf"
        or scores.dtype.kind not in "iuf"
        or boxes.shape != (n, 4)
        or scores.shape != (n,)
    ):
        return None
    boxes = boxes.astype(np.float64)
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
        return None
    return DetectionArrays(
        image_ids=image_ids.astype(np.int64),
        category_ids=category_ids.astype(np.int64),
        boxes=boxes,
        scores=scores.astype(np.float64),
    )


def _detections_from_dicts(detections: Sequence[Mapping[str, Any]]) -> DetectionArrays:
    fast = _detections_from_dicts_fast(detections)
    if fast is not None:
        return fast
    n = len(detections)
    image_ids = np.empty(n, dtype=np.int64)
    category_ids = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.float64)
    scores = np.empty(n, dtype=np.float64)
    for i, det in enumerate(detections):
        what = f"detection {i}"
        _require_keys(det, _DETECTION_KEYS, what)
        image_ids[i] = _as_int_id(det["image_id"], f"{what} image_id")
        category_ids[i] = _as_int_id(det["category_id"], f"{what} category_id")
        boxes[i] = _as_box(det["bbox"], what)
        score = det["score"]
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise ValueError(f"{what} score must be a real number, got {score!r}")
        scores[i] = float(score)
    return DetectionArrays(image_ids=image_ids, category_ids=category_ids, boxes=boxes, scores=scores)


def parse_detections(detections: DetectionsLike | DetectionArrays, gt: GroundTruth) -> DetectionArrays:
    """Validate COCO detection results against ``gt`` and return their :class:`DetectionArrays`.

    Raises:
        ValueError: on a missing key, a malformed box (negative width/height, non-finite), a non-finite
            score, or an ``image_id`` / ``category_id`` absent from the ground truth.
    """
    if isinstance(detections, DetectionArrays):
        arrays = detections
    elif isinstance(detections, np.ndarray):
        arrays = _detections_from_array(detections)
    elif isinstance(detections, (str, bytes, Mapping)) or not isinstance(detections, Sequence):
        raise ValueError(
            f"detections must be a list of COCO result dicts or an (N, 7) array, "
            f"got {type(detections).__name__}"
        )
    else:
        arrays = _detections_from_dicts(detections)

    bad = ~np.isfinite(arrays.scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"detection {i} has non-finite score {arrays.scores[i]}")
    unknown = ~np.isin(arrays.image_ids, gt.image_ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"detection {i} refers to image_id {arrays.image_ids[i]} absent from the ground truth"
        )
    unknown = ~np.isin(arrays.category_ids, gt.category_ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"detection {i} refers to category_id {arrays.category_ids[i]} absent from the ground-truth "
            f"categories {gt.category_ids.tolist()}"
        )
    return arrays
