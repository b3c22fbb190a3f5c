"""Seeded random COCO ground truth and detections for the evaluation cross-checks (not a test module)."""

from __future__ import annotations

from typing import Any

import numpy as np

CATEGORY_IDS = (3, 7, 11, 40)  # 40 never has ground truth


def random_coco(
    seed: int,
    *,
    n_images: int = 6,
    max_gt: int = 6,
    max_dt: int = 14,
    crowd_prob: float = 0.12,
    score_decimals: int | None = 1,
    integer_boxes: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A small ground truth (some images empty, one class never annotated, some crowd boxes) and
    detections that are jittered copies of ground truths (often duplicated, sometimes with the wrong
    class) plus random boxes. Integer boxes and rounded scores make IoU and score ties frequent."""
    rng = np.random.default_rng(seed)

    def coord(low: float, high: float) -> float:
        value = rng.uniform(low, high)
        return float(round(value)) if integer_boxes else float(value)

    images = [{"id": 100 + i, "width": 128, "height": 128, "file_name": f"{i}.jpg"} for i in range(n_images)]
    categories = [{"id": c, "name": f"class_{c}"} for c in CATEGORY_IDS]
    annotations = []
    ann_id = 5000
    for image in images:
        for _ in range(int(rng.integers(0, max_gt + 1))):
            w, h = coord(4, 40), coord(4, 40)
            crowd = int(rng.random() < crowd_prob)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image["id"],
                    "category_id": int(rng.choice(CATEGORY_IDS[:-1])),
                    "bbox": [coord(0, 80), coord(0, 80), w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                }
            )
            ann_id += 1
    gt = {"images": images, "annotations": annotations, "categories": categories}

    detections = []
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in images:
        anns = by_image.get(image["id"], [])
        for _ in range(int(rng.integers(0, max_dt + 1))):
            if anns and rng.random() < 0.75:
                src = anns[int(rng.integers(len(anns)))]
                x, y, w, h = src["bbox"]
                jitter = max(1.0, 0.25 * min(w, h))
                box = [x + coord(-jitter, jitter), y + coord(-jitter, jitter), w, h]
                box[2] = max(1.0, w + coord(-jitter, jitter))
                box[3] = max(1.0, h + coord(-jitter, jitter))
                category = src["category_id"] if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
            else:
                box = [coord(0, 90), coord(0, 90), coord(2, 40), coord(2, 40)]
                category = int(rng.choice(CATEGORY_IDS))
            score = float(rng.random())
            if score_decimals is not None:
                score = round(score, score_decimals)
            detections.append({"image_id": image["id"], "category_id": category, "bbox": box, "score": score})
    order = rng.permutation(len(detections))
    return gt, [detections[i] for i in order]
