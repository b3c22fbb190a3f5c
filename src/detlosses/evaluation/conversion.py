"""Conversion of per-image detector outputs to COCO results.

A detector returns, per image, boxes in ``[x1, y1, x2, y2]`` pixels, scores and integer labels (torch
tensors or numpy arrays). COCO results are ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
dicts with ``w = x2 - x1`` and ``h = y2 - y1``; the label-to-category mapping is the caller's (the
project uses ``category_id = label + 1``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["outputs_to_coco_detections", "to_coco_detections"]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy copy of a torch tensor / numpy array / sequence, detached and on the CPU."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        if value.is_floating_point():  # also covers float16 / bfloat16, which numpy cannot take directly
            value = value.double()
        value = value.numpy()
    try:
        return np.array(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be array-like, got {type(value).__name__}") from exc


def to_coco_detections(
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    image_id: int,
    label_to_category_id: Callable[[int], int],
) -> list[dict[str, Any]]:
    """COCO result dicts of one image.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes ``[x1, y1, x2, y2]`` (torch tensor, numpy array or nested lists).
        scores: ``(N,)`` confidence scores.
        labels: ``(N,)`` integer class labels.
        image_id: the COCO image id.
        label_to_category_id: maps a label to its COCO category id (e.g. ``lambda label: label + 1``).

    Returns:
        ``N`` dicts ``{"image_id", "category_id", "bbox": [x1, y1, x2 - x1, y2 - y1], "score"}``.

    Raises:
        ValueError: on mismatched lengths, a wrong box shape, non-finite values, ``x2 < x1`` or
            ``y2 < y1``, non-integer labels or a non-integer image id / category id.
    """
    if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
        raise ValueError(f"image_id must be an integer, got {image_id!r}")
    boxes = _to_numpy(boxes_xyxy, "boxes").astype(np.float64)
    score_arr = _to_numpy(scores, "scores").astype(np.float64).reshape(-1)
    label_arr = _to_numpy(labels, "labels").reshape(-1)
    if boxes.size == 0 and score_arr.size == 0 and label_arr.size == 0:
        return []
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) [x1, y1, x2, y2], got {boxes.shape}")
    n = boxes.shape[0]
    if score_arr.shape[0] != n or label_arr.shape[0] != n:
        raise ValueError(
            f"boxes, scores and labels must have the same length, got {n}, {score_arr.shape[0]}, "
            f"{label_arr.shape[0]} (image {image_id})"
        )
    if not np.isfinite(boxes).all():
        raise ValueError(f"boxes of image {image_id} contain non-finite coordinates")
    if not np.isfinite(score_arr).all():
        i = int(np.flatnonzero(~np.isfinite(score_arr))[0])
        raise ValueError(f"score {i} of image {image_id} is not finite: {score_arr[i]}")
    if not np.issubdtype(label_arr.dtype, np.integer):
        if not np.issubdtype(label_arr.dtype, np.floating) or not (label_arr == np.round(label_arr)).all():
            raise ValueError(f"labels of image {image_id} must be integers, got dtype {label_arr.dtype}")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    for values, name in ((widths, "x2 < x1"), (heights, "y2 < y1")):
        if (values < 0).any():
            i = int(np.flatnonzero(values < 0)[0])
            raise ValueError(
                f"box {i} of image {image_id} has {name} (negative width/height): {boxes[i].tolist()} "
                f"(boxes must be [x1, y1, x2, y2])"
            )

    category_of: dict[int, int] = {}
    results: list[dict[str, Any]] = []
    for i in range(n):
        label = int(label_arr[i])
        if label not in category_of:
            category_id = label_to_category_id(label)
            if isinstance(category_id, bool) or not isinstance(category_id, numbers.Integral):
                raise ValueError(f"label_to_category_id({label}) must return an integer, got {category_id!r}")
            category_of[label] = int(category_id)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": category_of[label],
                "bbox": [float(boxes[i, 0]), float(boxes[i, 1]), float(widths[i]), float(heights[i])],
                "score": float(score_arr[i]),
            }
        )
    return results


def outputs_to_coco_detections(
    outputs: Iterable[Mapping[str, Any]],
    label_to_category_id: Callable[[int], int],
) -> list[dict[str, Any]]:
    """COCO results of many images.

    Args:
        outputs: per-image mappings with keys ``"boxes"`` (XYXY), ``"scores"``, ``"labels"`` and
            ``"image_id"`` (torch tensors or numpy arrays; ``image_id`` an int or 0-d tensor).
        label_to_category_id: maps a label to its COCO category id.

    Raises:
        ValueError: on a missing key or any problem listed in :func:`to_coco_detections`.
    """
    results: list[dict[str, Any]] = []
    for index, output in enumerate(outputs):
        if not isinstance(output, Mapping):
            raise ValueError(f"output {index} must be a mapping, got {type(output).__name__}")
        for key in ("boxes", "scores", "labels", "image_id"):
            if key not in output:
                raise ValueError(f"output {index} is missing key {key!r}")
        image_id = output["image_id"]
        if hasattr(image_id, "item"):
            image_id = image_id.item()
        results.extend(
            to_coco_detections(
                output["boxes"], output["scores"], output["labels"], image_id, label_to_category_id
            )
        )
    return results
