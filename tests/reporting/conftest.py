"""Fixtures of the reporting tests: one real evaluation of random COCO data, shared per session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from detlosses.evaluation import EvaluationDetails, evaluate_detections, to_jsonable

from .report_data import random_coco


@pytest.fixture(scope="session")
def evaluation() -> tuple[dict[str, Any], EvaluationDetails]:
    gt, detections = random_coco(seed=1)
    return evaluate_detections(gt, detections, return_details=True)


@pytest.fixture()
def run_metrics(evaluation: tuple[dict[str, Any], EvaluationDetails]) -> dict[str, Any]:
    """The metrics.json of a run, as read back from disk (NaN -> None)."""
    metrics = dict(evaluation[0])
    metrics.update(
        seconds_per_iteration=0.0842,
        loss="rank_sort",
        run={"loss": "rank_sort", "model": "retinanet_mobilenet_v2", "data": "bccd", "epochs": 4, "seed": 0,
             "optimizer": {"name": "SGD", "lr": 0.01}},
    )
    return json.loads(json.dumps(to_jsonable(metrics)))
