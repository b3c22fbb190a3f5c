"""Malformed input fails early with a ValueError that names the problem."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from detlosses.evaluation import (
    coco_ap,
    compute_lrp,
    evaluate_detections,
    match_detections,
    to_coco_detections,
)

GT = {
    "images": [{"id": 1, "width": 50, "height": 50, "file_name": "1.jpg"}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}
    ],
}
DET = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}


def _det(**changes) -> list[dict]:
    det = {**DET, **changes}
    return [dict(DET), {k: v for k, v in det.items() if v is not ...}]


def _gt_with(**changes) -> dict:
    gt = copy.deepcopy(GT)
    ann = {**gt["annotations"][0], **changes}
    gt["annotations"] = [{k: v for k, v in ann.items() if v is not ...}]
    return gt


@pytest.mark.parametrize(
    ("detections", "message"),
    [
        (_det(bbox=[0, 0, -1, 10]), "detection 1 bbox has negative width"),
        (_det(bbox=[0, 0, 10, -3]), "negative height"),
        (_det(bbox=[0, 0, 10]), "sequence of 4 numbers"),
        (_det(bbox=[0, float("inf"), 10, 10]), "non-finite coordinates"),
        (_det(score=...), "detection 1 is missing key 'score'"),
        (_det(bbox=...), "missing key 'bbox'"),
        (_det(score=float("nan")), "detection 1 has non-finite score"),
        (_det(score="high"), "score must be a real number"),
        (_det(image_id=99), "image_id 99 absent from the ground truth"),
        (_det(category_id=5), "category_id 5 absent from the ground-truth categories"),
        (_det(image_id="1"), "image_id must be an integer"),
        ([DET, "not a dict"], "detection 1 must be a dict"),
        ({"image_id": 1}, "list of COCO result dicts"),
        (np.zeros((2, 6)), r"shape \(N, 7\)"),
        (np.array([[1, 0, 0, -2, 5, 0.5, 1]], dtype=float), "negative width"),
        (np.array([[1, 0, 0, 2, 5, np.nan, 1]], dtype=float), "non-finite score"),
    ],
)
@pytest.mark.parametrize("evaluator", [evaluate_detections, coco_ap, compute_lrp, match_detections])
def test_bad_detections(evaluator, detections, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluator(GT, detections)


@pytest.mark.parametrize(
    ("gt", "message"),
    [
        ({k: v for k, v in GT.items() if k != "annotations"}, "missing the 'annotations' list"),
        ({**GT, "images": []}, "no images"),
        ({**GT, "images": [{"width": 5}]}, "image 0 is missing key 'id'"),
        ({**GT, "categories": [{"id": 1}]}, "category 0 is missing key 'name'"),
        ({**GT, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}, "name 'a' is duplicated"),
        ({**GT, "images": GT["images"] * 2}, "image id 1 is duplicated"),
        ({**GT, "annotations": GT["annotations"] * 2}, "annotation id 1 is duplicated"),
        (_gt_with(bbox=[0, 0, 10, -1]), "annotation 0 .*negative height"),
        (_gt_with(bbox=...), "annotation 0 is missing key 'bbox'"),
        (_gt_with(image_id=3), "unknown image_id 3"),
        (_gt_with(category_id=8), "unknown category_id 8"),
        (_gt_with(area=-5), "invalid area"),
        (_gt_with(iscrowd=2), "iscrowd must be 0 or 1"),
        ([], "must be a COCO dict"),
    ],
)
def test_bad_ground_truth(gt, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_detections(gt, [DET])


def test_missing_area_defaults_to_box_area() -> None:
    metrics = evaluate_detections(_gt_with(area=..., iscrowd=...), [DET])
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APs"] == pytest.approx(1.0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="tau"):
        compute_lrp(GT, [DET], tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        evaluate_detections(GT, [DET], tau=0.0)
    with pytest.raises(ValueError, match="max_dets"):
        match_detections(GT, [DET], max_dets=0)
    with pytest.raises(ValueError, match="area_range"):
        match_detections(GT, [DET], area_range=(10, 1))


def test_bad_detector_outputs() -> None:
    boxes = torch.tensor([[10.0, 10.0, 5.0, 20.0]])  # x2 < x1
    with pytest.raises(ValueError, match="x2 < x1"):
        to_coco_detections(boxes, torch.tensor([0.5]), torch.tensor([0]), 1, lambda label: label + 1)
    with pytest.raises(ValueError, match="same length"):
        to_coco_detections(torch.zeros((2, 4)), torch.zeros(1), torch.zeros(2), 1, lambda label: label)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        to_coco_detections(torch.zeros((2, 5)), torch.zeros(2), torch.zeros(2), 1, lambda label: label)
    with pytest.raises(ValueError, match="not finite"):
        to_coco_detections(torch.zeros((1, 4)), torch.tensor([float("nan")]), torch.zeros(1), 1, int)
    with pytest.raises(ValueError, match="labels of image 1 must be integers"):
        to_coco_detections(torch.zeros((1, 4)), torch.ones(1), torch.tensor([0.5]), 1, int)
    with pytest.raises(ValueError, match="must return an integer"):
        to_coco_detections(torch.zeros((1, 4)), torch.ones(1), torch.tensor([1]), 1, lambda label: "cat")
    with pytest.raises(ValueError, match="image_id must be an integer"):
        to_coco_detections(torch.zeros((1, 4)), torch.ones(1), torch.tensor([1]), "img", int)
