"""COCO ground-truth conventions shared by the data sets and the evaluator.

Convention: a detector predicts 0-based contiguous class indices (``labels``); COCO files use category
ids that start at 1.  Inside detlosses the two are tied by ``category_id = label + 1`` for every data
set, whatever the ids of its source file were (a COCO source is remapped to contiguous labels on reading,
so its original category ids are not kept).  COCO boxes are ``[x, y, width, height]`` in absolute pixels
of the original image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


def label_to_category_id(label: int) -> int:
    """COCO category id of a 0-based contiguous class index (``label + 1``)."""
    if label < 0:
        raise ValueError(f"labels are 0-based class indices, got {label}")
    return int(label) + 1


def category_id_to_label(category_id: int) -> int:
    """0-based contiguous class index of a detlosses COCO category id (``category_id - 1``)."""
    if category_id < 1:
        raise ValueError(f"detlosses category ids start at 1, got {category_id}")
    return int(category_id) - 1


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Convert ``[N, 4]`` XYXY boxes to COCO ``[x, y, width, height]``."""
    return torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)


def coco_categories(classes: Sequence[str]) -> list[dict[str, Any]]:
    """The COCO ``categories`` list of a class list: ``{"id": label + 1, "name": classes[label]}``."""
    return [{"id": label_to_category_id(label), "name": name} for label, name in enumerate(classes)]


def build_coco_ground_truth(
    images: Iterable[tuple[dict[str, Any], Tensor, Tensor]], classes: Sequence[str]
) -> dict[str, Any]:
    """Assemble a COCO ground-truth dict.

    Args:
        images: for each image, its COCO image entry (``id``, ``file_name``, ``width``, ``height``), its
            boxes (XYXY absolute pixels of that image, ``[N, 4]``) and its 0-based labels (``[N]``).
        classes: the class names, indexed by label.

    Returns:
        ``{"images", "annotations", "categories"}`` with annotation ids numbered from 1, ``bbox`` in
        ``[x, y, w, h]``, ``area = w * h``, ``iscrowd = 0`` and ``category_id = label + 1``.
    """
    image_entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for info, boxes, labels in images:
        image_entries.append(dict(info))
        for box, label in zip(xyxy_to_xywh(boxes).tolist(), labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": info["id"],
                    "category_id": label_to_category_id(label),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return {"images": image_entries, "annotations": annotations, "categories": coco_categories(classes)}
