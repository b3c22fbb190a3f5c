"""The matching module against faster-coco-eval's own matching and precision curves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as coco_mask

from detlosses.evaluation import coco_box_iou, greedy_match, match_detections

from .eval_random_data import random_coco


def _silent(*_args, **_kwargs) -> None:
    return None


def _reference_eval(gt: dict, dets: list[dict], max_dets: int) -> COCOeval_faster:
    """faster-coco-eval at IoU 0.5, area 'all', one maxDets setting, with its match list kept."""
    coco_gt = COCO(copy.deepcopy(gt), print_function=_silent)
    coco_dt = coco_gt.loadRes(copy.deepcopy(dets))  # detection ids become index + 1
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_silent, extra_calc=True)
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.params.areaRng = [[0.0, 1e5**2]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.params.maxDets = [max_dets]
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def _interpolated_precision(is_tp: np.ndarray, is_fp: np.ndarray, n_gt: int) -> np.ndarray:
    """COCO's 101-point interpolated precision from score-ordered TP / FP flags."""
    recall_points = np.linspace(0.0, 1.0, 101)
    if n_gt == 0:
        return np.full(101, -1.0)
    tp = np.cumsum(is_tp).astype(float)
    fp = np.cumsum(is_fp).astype(float)
    recall = tp / n_gt
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
    idx = np.searchsorted(recall, recall_points, side="left")
    out = np.zeros(101)
    valid = idx < precision.size
    out[valid] = precision[idx[valid]]
    return out


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("max_dets", [100, 3])
def test_matching_equals_faster_coco_eval(seed: int, max_dets: int) -> None:
    gt, dets = random_coco(seed, n_images=7, max_gt=7, max_dt=16)
    ours = match_detections(gt, dets, iou_threshold=0.5, max_dets=max_dets)
    reference = _reference_eval(gt, dets, max_dets)

    # Pairs (detection id, ground-truth id) -> IoU, including matches to crowd regions.
    expected = {tuple(int(v) for v in key.split("_")): iou for key, iou in reference.eval["matched"].items()}
    got = {}
    for category in ours.categories.values():
        for index, gt_id, iou in zip(category.detection_indices, category.gt_ids, category.ious, strict=True):
            if gt_id >= 0:
                got[(int(index) + 1, int(gt_id))] = float(iou)
    assert got.keys() == expected.keys()
    for key, iou in expected.items():
        assert got[key] == iou  # bit-identical IoU

    # Score order, ignore flags and truncation all enter the precision curves.
    precision = reference.eval["precision"]  # [T=1, R, K, A=1, M=1]
    for k, category_id in enumerate(reference.params.catIds):
        category = ours.categories[int(category_id)]
        mine = _interpolated_precision(category.is_tp, category.is_fp, category.n_gt)
        np.testing.assert_allclose(mine, precision[0, :, k, 0, 0], atol=1e-12)
        kept_per_image = np.unique(category.image_ids, return_counts=True)[1]
        assert (kept_per_image <= max_dets).all()


def test_iou_equals_coco_mask_api() -> None:
    rng = np.random.default_rng(0)
    dt = np.round(rng.uniform(0, 50, size=(40, 4)), 1)
    gt = np.round(rng.uniform(0, 50, size=(30, 4)), 1)
    crowd = rng.random(30) < 0.3
    reference = np.asarray(coco_mask.iou(dt.tolist(), gt.tolist(), crowd.astype(int).tolist()))
    np.testing.assert_array_equal(coco_box_iou(dt, gt, crowd), reference)


def test_iou_simple_values() -> None:
    gt = np.array([[0, 0, 10, 10]], dtype=float)
    dt = np.array([[0, 0, 10, 5], [5, 0, 10, 10], [10, 0, 5, 5], [0, 0, 0, 0], [2, 2, 4, 4]], dtype=float)
    np.testing.assert_allclose(coco_box_iou(dt, gt)[:, 0], [0.5, 50 / 150, 0.0, 0.0, 0.16])
    # crowd: intersection over the detection's area
    np.testing.assert_allclose(coco_box_iou(dt, gt, np.array([True]))[:, 0], [1.0, 0.5, 0.0, 0.0, 1.0])


def test_greedy_match_ties_and_crowd() -> None:
    # equal IoU with two regular ground truths: COCO keeps the last one (>= comparison)
    ious = np.array([[0.7, 0.7, 0.2]])
    assert greedy_match(ious, np.zeros(3, bool), np.zeros(3, bool), 0.5).tolist() == [1]
    # a regular ground truth wins over a better-overlapping ignored (crowd) one
    ious = np.array([[0.9, 0.6], [0.95, 0.55]])
    ignore = np.array([True, False])
    assert greedy_match(ious, ignore, ignore, 0.5).tolist() == [1, 0]
    # a crowd region absorbs any number of detections; a regular ground truth only one
    ious = np.array([[0.8, 0.9], [0.8, 0.9], [0.8, 0.9]])
    ignore = np.array([False, True])
    assert greedy_match(ious, ignore, ignore, 0.5).tolist() == [0, 1, 1]
    # below the threshold: unmatched
    assert greedy_match(np.array([[0.49]]), np.zeros(1, bool), np.zeros(1, bool), 0.5).tolist() == [-1]


def test_max_dets_keeps_highest_scores() -> None:
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10, "file_name": "a"}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    scores = np.linspace(0.01, 0.99, 150)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float(s)} for s in scores]
    category = match_detections(gt, dets, max_dets=100).categories[1]
    assert len(category) == 100
    np.testing.assert_allclose(category.scores, np.sort(scores)[::-1][:100])
