"""Box IoU exactly as the COCO evaluator computes it for ``iouType="bbox"``.

For a detection ``d = [x_d, y_d, w_d, h_d]`` and a ground truth ``g`` (both ``[x, y, w, h]``):

    I = max(0, min(x_d + w_d, x_g + w_g) - max(x_d, x_g)) * max(0, min(y_d + h_d, y_g + h_g) - max(y_d, y_g))
    IoU(d, g) = I / (w_d h_d + w_g h_g - I)         for a regular ground truth,
    IoU(d, g) = I / (w_d h_d)                       for a crowd ground truth (``iscrowd = 1``),

with areas ``w * h`` (no ``+1`` pixel convention) and IoU 0 when the boxes do not overlap with positive
width and height. The operations are those of ``bbIou`` in the COCO mask API (``maskApi.c``), in the same
order and in float64, so matching decisions at exactly the threshold agree with pycocotools and
faster-coco-eval bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["coco_box_iou"]


def coco_box_iou(
    dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_iscrowd: np.ndarray | None = None
) -> np.ndarray:
    """IoU matrix between detections and ground truths, COCO ``bbox`` semantics.

    Args:
        dt_boxes: ``(D, 4)`` ``[x, y, w, h]`` detection boxes.
        gt_boxes: ``(G, 4)`` ``[x, y, w, h]`` ground-truth boxes.
        gt_iscrowd: optional ``(G,)`` bool; for crowd boxes the union is the detection's area.

    Returns:
        ``(D, G)`` float64 IoU matrix.
    """
    dt = np.asarray(dt_boxes, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    crowd = np.zeros(gt.shape[0], dtype=bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, dtype=bool)
    if crowd.shape != (gt.shape[0],):
        raise ValueError(f"gt_iscrowd must have shape ({gt.shape[0]},), got {crowd.shape}")

    dx, dy, dw, dh = (dt[:, i : i + 1] for i in range(4))
    gx, gy, gw, gh = (gt[None, :, i] for i in range(4))
    da = dw * dh
    ga = gw * gh
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    union = np.where(crowd[None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)
    return iou
