"""Realistic inputs for the reporting tests (not a test module): a seeded random COCO evaluation, a
Lightning-style sparse ``metrics.csv`` and a GHM ``gradient_norms.json``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

CATEGORY_IDS = (3, 7, 11, 40)  # 40 never has ground truth


def random_coco(seed: int, *, n_images: int = 10, max_gt: int = 6, max_dt: int = 14) -> tuple[dict, list[dict]]:
    """A small COCO ground truth (one class never annotated) and detections: jittered copies of the
    ground truths (some with the wrong class) plus random boxes, with random scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + i, "width": 128, "height": 128, "file_name": f"{i}.jpg"} for i in range(n_images)]
    categories = [{"id": c, "name": f"class_{c}"} for c in CATEGORY_IDS]
    annotations = []
    for image in images:
        for _ in range(int(rng.integers(1, max_gt + 1))):
            w, h = float(rng.uniform(4, 60)), float(rng.uniform(4, 60))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image["id"],
                "category_id": int(rng.choice(CATEGORY_IDS[:-1])),
                "bbox": [float(rng.uniform(0, 60)), float(rng.uniform(0, 60)), w, h],
                "area": w * h,
                "iscrowd": 0,
            })
    detections = []
    for image in images:
        anns = [a for a in annotations if a["image_id"] == image["id"]]
        for _ in range(int(rng.integers(0, max_dt + 1))):
            if rng.random() < 0.75:
                src = anns[int(rng.integers(len(anns)))]
                x, y, w, h = src["bbox"]
                j = 0.2 * min(w, h)
                box = [x + rng.uniform(-j, j), y + rng.uniform(-j, j), max(1.0, w + rng.uniform(-j, j)),
                       max(1.0, h + rng.uniform(-j, j))]
                category = src["category_id"] if rng.random() < 0.9 else int(rng.choice(CATEGORY_IDS))
            else:
                box = [rng.uniform(0, 90), rng.uniform(0, 90), rng.uniform(2, 40), rng.uniform(2, 40)]
                category = int(rng.choice(CATEGORY_IDS))
            detections.append({"image_id": image["id"], "category_id": category,
                               "bbox": [float(v) for v in box], "score": float(rng.random())})
    return {"images": images, "annotations": annotations, "categories": categories}, detections


CSV_COLUMNS = ["epoch", "lr-SGD", "step", "train/loss", "train/loss_cls", "train/loss_box", "val/AP", "val/oLRP"]


def write_lightning_csv(path: Path, *, epochs: int = 4, steps_per_epoch: int = 50, log_every: int = 5,
                        nan_at_step: int | None = 15) -> Path:
    """A ``metrics.csv`` as Lightning's CSVLogger writes it: sparse rows (train rows every ``log_every``
    steps, a learning-rate row at each of them, one validation row per epoch); a NaN total loss at
    ``nan_at_step``."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for epoch in range(epochs):
        for i in range(0, steps_per_epoch, log_every):
            step = epoch * steps_per_epoch + i
            cls, box = 1.2 * math.exp(-step / 80) + 0.05 * rng.random(), 0.5 * math.exp(-step / 120) + 0.02
            total = math.nan if step == nan_at_step else cls + box
            rows.append({"epoch": epoch, "step": step, "train/loss": total, "train/loss_cls": cls,
                         "train/loss_box": box})
            rows.append({"lr-SGD": 0.01 * (0.1 if epoch >= 3 else 1.0), "step": step})
        rows.append({"epoch": epoch, "step": (epoch + 1) * steps_per_epoch - 1, "val/AP": 0.1 + 0.05 * epoch,
                     "val/oLRP": 0.9 - 0.03 * epoch})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return path


def gradient_norms(n_epochs: int = 5, bins: int = 30) -> dict[str, Any]:
    """A GHM ``gradient_norms.json`` payload: most elements easy (g near 0), a few outliers near 1."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    centers = (np.arange(bins) + 0.5) / bins
    epochs = []
    for e in range(n_epochs):
        density = 1e5 * np.exp(-centers * (8 + 4 * e)) + 50 * centers**4
        counts = np.round(density).astype(int)
        counts[bins // 2] = 0  # an empty bin (a gap on the log axis)
        epochs.append({"epoch": e, "counts": counts.tolist()})
    return {"edges": edges, "epochs": epochs}


def write_gradient_norms(path: Path, **kwargs: Any) -> Path:
    path.write_text(json.dumps(gradient_norms(**kwargs)))
    return path
