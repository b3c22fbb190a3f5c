"""Optimal LRP against an independent brute force: for every distinct score threshold, filter the
detections, redo a naive greedy matching from scratch, compute LRP, and take the minimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detlosses.evaluation import compute_lrp

from .eval_random_data import random_coco

TAU = 0.5


def _naive_iou(d: list[float], g: list[float], crowd: bool) -> float:
    iw = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    ih = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    return inter / union


def _naive_counts(gt: dict, dets: list[dict], category_id: int, threshold: float | None, max_dets: int):
    """(n_tp, n_fp, sum of (1 - IoU) over TPs) keeping the detections with score >= threshold."""
    n_tp = n_fp = 0
    loc = 0.0
    for image in gt["images"]:
        anns = [
            a for a in gt["annotations"] if a["image_id"] == image["id"] and a["category_id"] == category_id
        ]
        regular = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        mine = [
            d
            for d in dets
            if d["image_id"] == image["id"]
            and d["category_id"] == category_id
            and threshold is not None
            and d["score"] >= threshold
        ]
        mine = sorted(mine, key=lambda d: -d["score"])[:max_dets]  # sorted() is stable
        taken: set[int] = set()
        for d in mine:
            best, best_iou = None, TAU
            for a in regular:
                if a["id"] in taken:
                    continue
                iou = _naive_iou(d["bbox"], a["bbox"], False)
                if iou >= best_iou:
                    best, best_iou = a, iou
            if best is not None:
                taken.add(best["id"])
                n_tp += 1
                loc += 1.0 - best_iou
                continue
            if any(_naive_iou(d["bbox"], a["bbox"], True) >= TAU for a in crowd):
                continue  # ignored
            n_fp += 1
    return n_tp, n_fp, loc


def _brute_force_olrp(gt: dict, dets: list[dict], category_id: int, max_dets: int = 100) -> dict:
    n_gt = sum(1 for a in gt["annotations"] if a["category_id"] == category_id and not a.get("iscrowd", 0))
    if n_gt == 0:
        return {"olrp": math.nan}
    scores = sorted({d["score"] for d in dets if d["category_id"] == category_id}, reverse=True)
    best = None
    for threshold in [None, *scores]:  # None keeps nothing
        n_tp, n_fp, loc = _naive_counts(gt, dets, category_id, threshold, max_dets)
        n_fn = n_gt - n_tp
        lrp = (loc / (1 - TAU) + n_fp + n_fn) / (n_tp + n_fp + n_fn)
        if best is None or lrp < best["olrp"] - 1e-12:
            best = {
                "olrp": lrp,
                "loc": loc / n_tp if n_tp else math.nan,
                "fp": n_fp / (n_tp + n_fp) if n_tp + n_fp else math.nan,
                "fn": n_fn / n_gt,
                "threshold": math.nan if threshold is None else threshold,
                "n_tp": n_tp,
            }
    return best


def _check_against_brute_force(gt: dict, dets: list[dict], max_dets: int = 100) -> None:
    result = compute_lrp(gt, dets, tau=TAU, max_dets=max_dets)
    olrps, locs, fps, fns = [], [], [], []
    for category in gt["categories"]:
        expected = _brute_force_olrp(gt, dets, category["id"], max_dets)
        got = result.per_class[category["id"]]
        if math.isnan(expected["olrp"]):
            assert math.isnan(got.olrp) and got.n_gt == 0
            continue
        assert got.olrp == pytest.approx(expected["olrp"], abs=1e-9)
        for name in ("loc", "fp", "fn", "threshold"):
            assert getattr(got, name) == pytest.approx(expected[name], abs=1e-9, nan_ok=True), name
        assert got.n_tp == expected["n_tp"]
        olrps.append(expected["olrp"])
        fns.append(expected["fn"])
        locs += [expected["loc"]] if not math.isnan(expected["loc"]) else []
        fps += [expected["fp"]] if not math.isnan(expected["fp"]) else []
    for got_mean, values in (
        (result.molrp, olrps),
        (result.molrp_fn, fns),
        (result.molrp_loc, locs),
        (result.molrp_fp, fps),
    ):
        expected_mean = float(np.mean(values)) if values else math.nan  # a mean over no class is NaN
        assert got_mean == pytest.approx(expected_mean, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("seed", range(30))
def test_olrp_equals_brute_force_with_ties(seed: int) -> None:
    # integer boxes and one-decimal scores: many IoU and score ties
    gt, dets = random_coco(1000 + seed, n_images=5, max_gt=6, max_dt=14, score_decimals=1)
    _check_against_brute_force(gt, dets)


@pytest.mark.parametrize("seed", range(10))
def test_olrp_equals_brute_force_continuous(seed: int) -> None:
    gt, dets = random_coco(2000 + seed, score_decimals=None, integer_boxes=False)
    _check_against_brute_force(gt, dets)


def test_olrp_equals_brute_force_with_truncation() -> None:
    gt, dets = random_coco(77, n_images=4, max_gt=5, max_dt=20, score_decimals=2)
    _check_against_brute_force(gt, dets, max_dets=4)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    decimals=st.sampled_from([0, 1, 2, None]),
    n_images=st.integers(1, 4),
)
def test_olrp_equals_brute_force_hypothesis(seed: int, decimals: int | None, n_images: int) -> None:
    gt, dets = random_coco(seed, n_images=n_images, max_gt=4, max_dt=8, score_decimals=decimals)
    _check_against_brute_force(gt, dets)
