"""ATSS assignment against a slow reference written from the paper, and the RetinaNet that uses it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detlosses.models import DetectorConfig, build_criterion, build_detector
from detlosses.models.atss import atss_match
from detlosses.training import TrainConfig


def _reference(gt: list[list[float]], anchors: list[list[float]], per_level: list[int], top_k: int) -> list[int]:
    """Zhang et al. 2020, Algorithm 1, one box and one anchor at a time (Python floats)."""

    def centre(b):
        return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    best = [(-1.0, -1)] * len(anchors)
    for g, box in enumerate(gt):
        gc = centre(box)
        candidates, start = [], 0
        for count in per_level:
            level = sorted(range(start, start + count), key=lambda a: (math.dist(gc, centre(anchors[a])), a))
            candidates += level[:top_k]
            start += count
        values = [iou(anchors[a], box) for a in candidates]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        for a, value in zip(candidates, values, strict=True):
            cx, cy = centre(anchors[a])
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if value >= mean + std and inside and value > best[a][0]:
                best[a] = (value, g)
    return [g for _, g in best]


def _grid_anchors(sizes: list[int], strides: list[int], image: int) -> tuple[torch.Tensor, list[int]]:
    anchors, per_level = [], []
    for size, stride in zip(sizes, strides, strict=True):
        n = 0
        for y in range(stride // 2, image, stride):
            for x in range(stride // 2, image, stride):
                # distinct centre offsets avoid exact distance ties, whose order is arbitrary
                anchors.append([x - size / 2 + 0.001 * n, y - size / 2, x + size / 2 + 0.001 * n, y + size / 2])
                n += 1
        per_level.append(n)
    return torch.tensor(anchors, dtype=torch.float64), per_level


def test_hand_checked_example():
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [40, 40, 60, 60.0]], dtype=torch.float64)
    gt = torch.tensor([[0, 0, 12, 12.0]], dtype=torch.float64)
    # top 2 per level: level 1 = anchors 0..2 -> 0 (IoU 100/144) and 1 or 2 (IoU 20/224); level 2 = anchor 3 (IoU 0)
    # mean + std of (0.694, 0.089, 0) = 0.261 + 0.375: only anchor 0 passes, and its centre is inside
    assert atss_match(gt, anchors, [3, 1], top_k=2).tolist() == [0, -1, -1, -1]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(6, 60), st.floats(6, 60)), min_size=0,
                max_size=5), st.integers(1, 12))
def test_matches_the_reference(boxes, top_k):
    anchors, per_level = _grid_anchors([16, 32, 64], [8, 16, 32], 128)
    gt = torch.tensor([[x, y, min(128.0, x + w), min(128.0, y + h)] for x, y, w, h in boxes],
                      dtype=torch.float64).reshape(-1, 4)
    got = atss_match(gt, anchors, per_level, top_k)
    assert got.tolist() == _reference(gt.tolist(), anchors.tolist(), per_level, top_k)


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match="sums to 3"):
        atss_match(torch.zeros(1, 4), torch.zeros(4, 4), [1, 2])


def test_atss_retinanet_trains_and_predicts():
    torch.manual_seed(0)
    config = DetectorConfig(num_classes=2, image_size=64, fpn_channels=16, assigner="atss", anchors_per_octave=1,
                            anchor_ratios=(1.0,), anchor_scale=8.0, box_coder_weights=(10.0, 10.0, 5.0, 5.0))
    detector = build_detector(config, build_criterion("rank_sort"))
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = detector(images, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert detector.head.regression_head.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert detector.anchor_generator.num_anchors_per_location() == [1] * 5
    detector.eval()
    with torch.no_grad():
        assert "boxes" in detector(images)[0]


@pytest.mark.parametrize("override, message", [
    ({"assigner": "nearest"}, "assigner must be one of"),
    ({"anchors_per_octave": 0}, "anchors_per_octave must be >= 1"),
    ({"box_coder_weights": [1.0, 1.0]}, "box_coder_weights must be 4 positive numbers"),
    ({"model": "fcos", "assigner": "atss"}, "apply to RetinaNet only"),
])
def test_bad_recipe_settings_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**override)
