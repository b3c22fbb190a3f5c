"""Spearman's rank correlation between score and IoU of the true positives, on constructed matchings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detlosses.evaluation import CategoryMatches, MatchResult
from detlosses.reporting import plot_score_vs_iou, score_iou_spearman, true_positives


def category(category_id: int, scores, ious, is_tp, is_ignored=None, n_gt=None) -> CategoryMatches:
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    n = scores.shape[0]
    is_tp = np.asarray(is_tp, dtype=bool)
    is_ignored = np.zeros(n, dtype=bool) if is_ignored is None else np.asarray(is_ignored, dtype=bool)
    return CategoryMatches(
        category_id=category_id,
        n_gt=int(is_tp.sum()) if n_gt is None else n_gt,
        scores=scores[order],
        image_ids=np.zeros(n, dtype=np.int64),
        is_tp=is_tp[order],
        is_ignored=is_ignored[order],
        ious=np.asarray(ious, dtype=np.float64)[order],
        gt_ids=np.where(is_tp, np.arange(n), -1)[order],
        detection_indices=order.astype(np.int64),
    )


def matching(*categories: CategoryMatches) -> MatchResult:
    return MatchResult(
        iou_threshold=0.5,
        max_dets=100,
        area_range=(0.0, 1e10),
        categories={c.category_id: c for c in categories},
        category_names={c.category_id: f"cls{c.category_id}" for c in categories},
    )


def test_perfectly_monotone_is_one_across_classes_ignoring_fps() -> None:
    # TPs of two classes: IoU strictly increasing with score (pooled); FPs and an ignored detection with
    # arbitrary scores must not count.
    a = category(1, [0.9, 0.7, 0.5, 0.35, 0.95], [0.95, 0.8, 0.6, np.nan, 0.55], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1])
    b = category(2, [0.8, 0.6, 0.99, 0.1], [0.9, 0.7, np.nan, np.nan], [1, 1, 0, 0])
    result = matching(a, b)
    tps = true_positives(result)
    assert len(tps) == 5
    assert sorted(tps.scores.tolist()) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert score_iou_spearman(result) == pytest.approx(1.0)


def test_reversed_is_minus_one_and_known_value() -> None:
    assert score_iou_spearman(matching(category(1, [0.9, 0.6, 0.3], [0.6, 0.7, 0.8], [1, 1, 1]))) == pytest.approx(-1.0)
    # ranks: scores 4,3,2,1 vs ious 3,4,1,2 -> d = 1,-1,1,-1 -> rho = 1 - 6*4/(4*15) = 0.6
    result = matching(category(1, [0.9, 0.8, 0.7, 0.6], [0.8, 0.9, 0.6, 0.7], [1, 1, 1, 1]))
    assert score_iou_spearman(result) == pytest.approx(0.6)


def test_fewer_than_three_true_positives_or_constant_is_nan(tmp_path: Path) -> None:
    two = matching(category(1, [0.9, 0.8, 0.7], [0.9, 0.6, np.nan], [1, 1, 0]))
    assert math.isnan(score_iou_spearman(two))
    assert math.isnan(plot_score_vs_iou(two, tmp_path / "two.png"))
    assert (tmp_path / "two.png").stat().st_size > 0
    constant = matching(category(1, [0.9, 0.8, 0.7], [0.75, 0.75, 0.75], [1, 1, 1]))
    assert math.isnan(score_iou_spearman(constant))
    empty = matching(category(1, [], [], [], n_gt=3))
    assert len(true_positives(empty)) == 0
    assert math.isnan(plot_score_vs_iou(empty, tmp_path / "empty.png"))
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_plot_returns_the_correlation(tmp_path: Path) -> None:
    result = matching(category(1, [0.9, 0.8, 0.7, 0.6], [0.8, 0.9, 0.6, 0.7], [1, 1, 1, 1]))
    assert plot_score_vs_iou(result, tmp_path / "s.png") == pytest.approx(0.6)


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(TypeError, match="MatchResult"):
        true_positives({"categories": {}})
