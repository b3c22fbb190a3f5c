"""A fixture small enough to compute matching, LRP, oLRP, its components and COCO AP50 by hand.

Boxes are chosen so that every IoU is a simple fraction: against a 10x10 ground truth at the origin, a
10x8 box has IoU 80/100 = 0.8, a 10x6 box 0.6, a 10x5 box 0.5 (exactly the threshold: a TP), a 10x4
box 0.4 (an FP).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from detlosses.evaluation import (
    coco_ap,
    compute_lrp,
    evaluate_detections,
    lrp_curve,
    match_detections,
)

CELL, BLOB, GHOST = 1, 7, 9


def _ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0) -> dict:
    area = bbox[2] * bbox[3]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": area,
        "iscrowd": iscrowd,
    }


@pytest.fixture()
def hand_gt() -> dict:
    return {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
        "categories": [
            {"id": CELL, "name": "cell"},
            {"id": BLOB, "name": "blob"},
            {"id": GHOST, "name": "ghost"},
        ],
        "annotations": [
            _ann(11, 1, CELL, [0, 0, 10, 10]),
            _ann(12, 2, CELL, [0, 0, 10, 10]),
            _ann(13, 2, CELL, [20, 20, 10, 10]),
            _ann(21, 1, BLOB, [0, 0, 20, 20]),
            # a crowd region: detections inside it are ignored, it is not a ground truth to find
            _ann(22, 3, BLOB, [50, 50, 40, 40], iscrowd=1),
        ],
    }


@pytest.fixture()
def hand_dets() -> list[dict]:
    def det(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
        return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}

    return [
        # cell (3 ground truths)
        det(1, CELL, [0, 0, 10, 8], 0.9),  # d0: TP on gt 11, IoU 0.8
        det(2, CELL, [0, 0, 10, 6], 0.8),  # d1: TP on gt 12, IoU 0.6
        det(1, CELL, [0, 0, 10, 10], 0.7),  # d2: FP, duplicate of gt 11 (already taken)
        det(3, CELL, [0, 0, 10, 10], 0.6),  # d3: FP, image 3 has no cell
        det(2, CELL, [20, 20, 10, 5], 0.5),  # d4: TP on gt 13, IoU exactly 0.5
        det(2, CELL, [20, 20, 10, 4], 0.4),  # d5: FP, IoU 0.4 < 0.5 (and gt 13 taken)
        # blob (1 ground truth + 1 crowd region)
        det(1, BLOB, [0, 0, 20, 16], 0.95),  # e0: TP on gt 21, IoU 320/400 = 0.8
        det(3, BLOB, [50, 50, 20, 20], 0.95),  # e1: inside the crowd region -> ignored
        det(3, BLOB, [50, 50, 20, 20], 0.3),  # e2: crowd regions match repeatedly -> ignored
        det(1, BLOB, [60, 60, 10, 10], 0.95),  # e3: FP, tied in score with e0
        # ghost: no ground truth at all
        det(2, GHOST, [0, 0, 5, 5], 0.99),
    ]


def test_matching_by_hand(hand_gt: dict, hand_dets: list[dict]) -> None:
    result = match_detections(hand_gt, hand_dets)
    cell = result.categories[CELL]
    assert cell.n_gt == 3
    np.testing.assert_array_equal(cell.detection_indices, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(cell.is_tp, [True, True, False, False, True, False])
    np.testing.assert_array_equal(cell.gt_ids, [11, 12, -1, -1, 13, -1])
    np.testing.assert_allclose(cell.ious, [0.8, 0.6, np.nan, np.nan, 0.5, np.nan])
    assert cell.n_tp == 3 and cell.n_fp == 3

    blob = result.categories[BLOB]
    assert blob.n_gt == 1  # the crowd region does not count
    # score order, ties broken by image id then input order: e0, e3 (image 1), e1 (image 3), e2
    np.testing.assert_array_equal(blob.detection_indices, [6, 9, 7, 8])
    np.testing.assert_array_equal(blob.is_tp, [True, False, False, False])
    np.testing.assert_array_equal(blob.is_ignored, [False, False, True, True])
    np.testing.assert_array_equal(blob.gt_ids, [21, -1, 22, 22])
    np.testing.assert_allclose(blob.ious[:3], [0.8, np.nan, 1.0])  # crowd IoU = inter / det area

    ghost = result.categories[GHOST]
    assert ghost.n_gt == 0 and ghost.n_fp == 1


def test_lrp_by_hand(hand_gt: dict, hand_dets: list[dict]) -> None:
    # cell, tau = 0.5, all scores distinct so every k is a cut-off; loc term = sum(1 - IoU) / 0.5:
    #   k  kept                 TP FP FN  loc term           LRP
    #   0  -                    0  0  3   0                  3 / 3                 = 1
    #   1  d0 (.8)              1  0  2   .2/.5 = .4         (.4 + 0 + 2) / 3      = .8
    #   2  + d1 (.6)            2  0  1   (.2+.4)/.5 = 1.2   (1.2 + 0 + 1) / 3     = .7333  <- min
    #   3  + d2 FP              2  1  1   1.2                (1.2 + 1 + 1) / 4     = .8
    #   4  + d3 FP              2  2  1   1.2                (1.2 + 2 + 1) / 5     = .84
    #   5  + d4 (.5)            3  2  0   1.2 + 1 = 2.2      (2.2 + 2 + 0) / 5     = .84
    #   6  + d5 FP              3  3  0   2.2                (2.2 + 3 + 0) / 6     = .8667
    # oLRP = 11/15 at k = 2: threshold 0.8 (score of d1), loc = mean(.2, .4) = .3,
    # FP = 0 / 2 = 0, FN = 1 / 3.
    matches = match_detections(hand_gt, hand_dets)
    curve = lrp_curve(matches.categories[CELL], tau=0.5)
    np.testing.assert_array_equal(curve.num_kept, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(curve.lrp, [1, 0.8, 11 / 15, 0.8, 0.84, 0.84, 5.2 / 6])
    np.testing.assert_allclose(curve.thresholds, [np.nan, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert curve.at_threshold(0.75) == pytest.approx(11 / 15)  # keeps d0, d1
    assert curve.at_threshold(0.5) == pytest.approx(0.84)
    assert curve.at_threshold(2.0) == pytest.approx(1.0)

    # blob: the crowd-ignored e1, e2 are removed; e0 (TP, IoU .8) and e3 (FP) tie at 0.95, so the
    # only cut-offs are k = 0 (LRP 1) and k = 2: TP 1, FP 1, FN 0, loc .2/.5 = .4 -> (.4 + 1) / 2 = .7.
    # (Splitting the tie, k = 1 would give .4 / 1 = .4: ties must be kept or dropped together.)
    # oLRP = .7, threshold .95, loc = .2, FP = 1/2, FN = 0.
    blob_curve = lrp_curve(matches.categories[BLOB], tau=0.5)
    np.testing.assert_array_equal(blob_curve.num_kept, [0, 2])
    np.testing.assert_allclose(blob_curve.lrp, [1.0, 0.7])

    result = compute_lrp(hand_gt, hand_dets)
    cell = result.per_class[CELL]
    assert cell.olrp == pytest.approx(11 / 15)
    assert cell.loc == pytest.approx(0.3)
    assert cell.fp == pytest.approx(0.0)
    assert cell.fn == pytest.approx(1 / 3)
    assert cell.threshold == pytest.approx(0.8)
    assert (cell.n_gt, cell.n_tp, cell.n_fp, cell.n_fn) == (3, 2, 0, 1)

    blob = result.per_class[BLOB]
    assert blob.olrp == pytest.approx(0.7)
    assert blob.loc == pytest.approx(0.2)
    assert blob.fp == pytest.approx(0.5)
    assert blob.fn == pytest.approx(0.0)
    assert blob.threshold == pytest.approx(0.95)
    assert (blob.n_gt, blob.n_tp, blob.n_fp, blob.n_fn) == (1, 1, 1, 0)

    ghost = result.per_class[GHOST]  # no ground truth: undefined, excluded from the means
    assert ghost.n_gt == 0
    assert all(math.isnan(v) for v in (ghost.olrp, ghost.loc, ghost.fp, ghost.fn, ghost.threshold))

    # moLRP over cell and blob only
    assert result.molrp == pytest.approx((11 / 15 + 0.7) / 2)
    assert result.molrp_loc == pytest.approx((0.3 + 0.2) / 2)
    assert result.molrp_fp == pytest.approx((0.0 + 0.5) / 2)
    assert result.molrp_fn == pytest.approx((1 / 3 + 0.0) / 2)


def test_coco_ap50_by_hand(hand_gt: dict, hand_dets: list[dict]) -> None:
    # cell at IoU .5, score order TP TP FP FP TP FP, 3 gts: recall 1/3, 2/3, 2/3, 2/3, 1, 1 and
    # precision 1, 1, 2/3, 1/2, 3/5, 1/2; interpolated (max to the right): 1, 1, 2/3, .6, .6, .5.
    # At the 101 recall points: r <= 2/3 (r = 0 .. 0.66, 67 points) -> 1, r in 0.67 .. 1 (34) -> .6:
    #   AP50(cell) = (67 + 34 * .6) / 101 = 87.4 / 101.
    # blob at IoU .5: e0 TP then e3 FP (crowd-ignored removed): precision 1 up to recall 1 -> AP50 = 1.
    # At IoU .75 cell keeps only d0 (IoU .8) as TP: recall 1/3 at precision 1 -> 34 / 101; blob: 1.
    result = coco_ap(hand_gt, hand_dets)
    assert result["per_category_AP50"]["cell"] == pytest.approx(87.4 / 101)
    assert result["per_category_AP50"]["blob"] == pytest.approx(1.0)
    assert math.isnan(result["per_category_AP50"]["ghost"])
    assert math.isnan(result["per_category"]["ghost"])
    assert result["AP50"] == pytest.approx((87.4 / 101 + 1.0) / 2)
    assert result["AP75"] == pytest.approx((34 / 101 + 1.0) / 2)
    # PR curve of cell at IoU 0.5
    cell = result["category_names"].index("cell")
    expected = np.where(result["recall_thresholds"] <= 2 / 3, 1.0, 0.6)
    np.testing.assert_allclose(result["precision_iou50"][cell], expected)
    assert np.isnan(result["precision_iou50"][result["category_names"].index("ghost")]).all()
    # all objects are small (< 32^2): APs = AP, no medium / large ground truth -> NaN
    assert result["APs"] == pytest.approx(result["AP"])
    assert math.isnan(result["APm"]) and math.isnan(result["APl"])


def test_evaluate_detections_by_hand(hand_gt: dict, hand_dets: list[dict]) -> None:
    metrics, details = evaluate_detections(hand_gt, hand_dets, return_details=True)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN"):
        assert key in metrics
    assert metrics["oLRP"] == pytest.approx((11 / 15 + 0.7) / 2)
    assert metrics["oLRP_loc"] == pytest.approx(0.25)
    assert metrics["oLRP_FP"] == pytest.approx(0.25)
    assert metrics["oLRP_FN"] == pytest.approx(1 / 6)
    assert metrics["AP50"] == pytest.approx((87.4 / 101 + 1.0) / 2)
    assert (metrics["num_images"], metrics["num_gt"], metrics["num_detections"]) == (3, 4, 11)
    cell = metrics["per_class"]["cell"]
    assert cell["category_id"] == CELL
    assert cell["AP50"] == pytest.approx(87.4 / 101)
    assert cell["oLRP"] == pytest.approx(11 / 15)
    assert cell["lrp_threshold"] == pytest.approx(0.8)
    assert metrics["per_class"]["blob"]["lrp_threshold"] == pytest.approx(0.95)
    assert math.isnan(metrics["per_class"]["ghost"]["oLRP"])
    # the details expose the matching for plots: score vs IoU of the true positives
    cell_matches = details.matches.by_name("cell")
    np.testing.assert_allclose(cell_matches.scores[cell_matches.is_tp], [0.9, 0.8, 0.5])
    np.testing.assert_allclose(cell_matches.ious[cell_matches.is_tp], [0.8, 0.6, 0.5])
    assert details.lrp.per_class[CELL].olrp == pytest.approx(11 / 15)
    assert details.coco["precision_iou50"].shape == (3, 101)
