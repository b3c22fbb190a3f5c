"""Boundary behaviour: perfect / absent detections, classes and images without ground truth, JSON output,
conversion of detector outputs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from detlosses.evaluation import (
    coco_ap,
    compute_lrp,
    evaluate_detections,
    lrp_error,
    match_detections,
    outputs_to_coco_detections,
    to_coco_detections,
    write_metrics_json,
)

from .eval_random_data import random_coco


def _gt() -> dict:
    """Three classes, objects of every COCO size; image 4 has no annotations, class 'empty' no objects."""
    boxes = [
        (1, 1, [5, 5, 10, 10]),  # small
        (1, 2, [30, 30, 50, 40]),  # medium
        (2, 1, [0, 0, 120, 110]),  # large
        (2, 2, [200, 200, 20, 20]),
        (3, 1, [10, 10, 40, 40]),
    ]
    return {
        "images": [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "empty"}],
        "annotations": [
            {"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for n, (i, c, b) in enumerate(boxes)
        ],
    }


def _perfect(gt: dict) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "score": 0.5 + 0.1 * n,
        }
        for n, a in enumerate(gt["annotations"])
    ]


def test_perfect_detections() -> None:
    gt = _gt()
    metrics = evaluate_detections(gt, _perfect(gt))
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[key] == pytest.approx(1.0), key
    for key, value in (("oLRP", 0.0), ("oLRP_loc", 0.0), ("oLRP_FP", 0.0), ("oLRP_FN", 0.0)):
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    # the LRP-optimal threshold keeps every (true positive) detection: the lowest score of the class
    assert metrics["per_class"]["a"]["lrp_threshold"] == pytest.approx(0.5)
    assert metrics["per_class"]["b"]["lrp_threshold"] == pytest.approx(0.6)
    assert math.isnan(metrics["per_class"]["empty"]["oLRP"])
    assert math.isnan(metrics["per_class"]["empty"]["AP"])


def test_no_detections() -> None:
    gt = _gt()
    for empty in ([], np.zeros((0, 7))):
        metrics = evaluate_detections(gt, empty)
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert metrics[key] == 0.0, key
        assert metrics["oLRP"] == 1.0
        assert metrics["oLRP_FN"] == 1.0
        # no true positive anywhere: localisation and FP components are undefined
        assert math.isnan(metrics["oLRP_loc"]) and math.isnan(metrics["oLRP_FP"])
        per_class = metrics["per_class"]["a"]
        assert per_class["oLRP"] == 1.0 and per_class["n_tp"] == 0 and math.isnan(per_class["lrp_threshold"])


def test_no_true_positive_convention() -> None:
    gt = _gt()
    # only false positives for class 'a': oLRP 1, FN 1, loc/FP undefined, nothing kept
    dets = [{"image_id": 4, "category_id": 1, "bbox": [0, 0, 5, 5], "score": s} for s in (0.9, 0.3)]
    a = compute_lrp(gt, dets).per_class[1]
    assert (a.olrp, a.fn, a.n_tp, a.n_fp) == (1.0, 1.0, 0, 0)
    assert math.isnan(a.loc) and math.isnan(a.fp) and math.isnan(a.threshold)


def test_classes_without_ground_truth_are_excluded() -> None:
    gt = _gt()
    dets = _perfect(gt)[:3]
    base = compute_lrp(gt, dets)
    # false positives of the class without ground truth change neither moLRP nor AP
    extra = dets + [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 9, 9], "score": 0.99}]
    with_extra = compute_lrp(gt, extra)
    assert with_extra.molrp == pytest.approx(base.molrp)
    assert math.isnan(with_extra.per_class[3].olrp)
    assert coco_ap(gt, extra)["AP"] == pytest.approx(coco_ap(gt, dets)["AP"])
    # the mean runs over the two classes with ground truth
    assert base.molrp == pytest.approx((base.per_class[1].olrp + base.per_class[2].olrp) / 2)


def test_images_without_annotations() -> None:
    gt = _gt()
    dets = _perfect(gt) + [{"image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.01}]
    metrics = evaluate_detections(gt, dets)
    a = metrics["per_class"]["a"]
    assert a["n_fp"] == 0 and a["oLRP"] == pytest.approx(0.0)  # the low-score FP is thresholded away
    assert metrics["AP50"] == pytest.approx(1.0)
    # an image-less ground truth is refused, an annotation-less one evaluates to NaN
    empty_gt = {**gt, "annotations": []}
    metrics = evaluate_detections(empty_gt, dets)
    assert math.isnan(metrics["AP"]) and math.isnan(metrics["oLRP"])


def test_array_and_dict_detections_agree() -> None:
    gt, dets = random_coco(5)
    array = np.array(
        [[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], dtype=np.float64
    )
    from_dicts = evaluate_detections(gt, dets)
    from_array = evaluate_detections(gt, array)
    assert json.dumps(from_dicts, sort_keys=True) == json.dumps(from_array, sort_keys=True)


def test_inputs_are_not_mutated() -> None:
    gt, dets = random_coco(9)
    gt_before, dets_before = json.dumps(gt, sort_keys=True), json.dumps(dets, sort_keys=True)
    evaluate_detections(gt, dets)
    assert json.dumps(gt, sort_keys=True) == gt_before
    assert json.dumps(dets, sort_keys=True) == dets_before


def test_lrp_error_formula() -> None:
    # 2 TPs with IoU .75 and .5, 1 FP, 1 FN, tau .5: ((.25 + .5) / .5 + 1 + 1) / 4 = 3.5 / 4
    assert lrp_error(2, 1, 1, 0.75, tau=0.5) == pytest.approx(3.5 / 4)
    assert math.isnan(lrp_error(0, 0, 0, 0.0))
    np.testing.assert_allclose(lrp_error(np.array([1, 0]), np.array([0, 2]), np.array([0, 0]), 0.0), [0, 1])


def test_matching_area_range() -> None:
    gt = _gt()
    dets = _perfect(gt)
    small = match_detections(gt, dets, area_range=(0, 32**2))
    # only the 10x10 box of class 'a' is small; detections of the other objects match ignored ground truth
    assert small.categories[1].n_gt == 1
    assert small.categories[1].n_tp == 1
    assert small.categories[1].is_ignored.sum() == 2


def test_write_metrics_json(tmp_path) -> None:
    gt = _gt()
    metrics = evaluate_detections(gt, [])
    path = write_metrics_json(
        {**metrics, "extra": {"array": np.array([1.5, np.nan]), "n": np.int64(3), "inf": np.inf}},
        tmp_path / "run" / "metrics.json",
    )
    loaded = json.loads(path.read_text())
    assert loaded["oLRP"] == 1.0
    assert loaded["oLRP_loc"] is None  # NaN -> null
    assert loaded["APm"] == 0.0
    assert loaded["per_class"]["empty"]["oLRP"] is None
    assert loaded["extra"] == {"array": [1.5, None], "n": 3, "inf": None}
    # overwrite in place, leaving no temporary files behind
    write_metrics_json({"AP": 0.25}, path)
    assert json.loads(path.read_text()) == {"AP": 0.25}
    assert os.listdir(path.parent) == ["metrics.json"]
    with pytest.raises(ValueError, match="object"):
        write_metrics_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"AP": 0.25}
    assert os.listdir(path.parent) == ["metrics.json"]


def test_to_coco_detections_from_torch_and_numpy() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.5, 2.0]])
    scores = torch.tensor([0.9, 0.25])
    labels = torch.tensor([0, 2])
    out = to_coco_detections(boxes, scores, labels, 7, lambda label: label + 1)
    assert out == [
        {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 5.5, 2.0], "score": 0.25},
    ]
    batch = outputs_to_coco_detections(
        [
            {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy(), "image_id": 1},
            {
                "boxes": torch.zeros((0, 4)),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.long),
                "image_id": torch.tensor(2),
            },
            {
                "boxes": boxes.half(),
                "scores": scores.bfloat16(),
                "labels": labels,
                "image_id": torch.tensor(3),
            },
        ],
        lambda label: label + 1,
    )
    assert [d["image_id"] for d in batch] == [1, 1, 3, 3]
    assert batch[2]["bbox"] == [10.0, 20.0, 20.0, 40.0]
