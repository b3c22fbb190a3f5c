"""Claims against multi-seed runs: paired differences and the t-interval verdict."""

from __future__ import annotations

import math

import pytest

from detlosses.reporting.evidence import PAPERS_CLAIMS, Claim, evaluate_claim, paired_differences, verdict


def _runs(table: dict[str, list[float | None]], metric: str = "AP") -> list[dict]:
    return [{"loss": loss, "seed": seed, "metrics": {metric: value}}
            for loss, values in table.items() for seed, value in enumerate(values)]


def test_differences_are_paired_by_seed_and_skip_undefined_values():
    runs = _runs({"focal": [0.30, 0.32, None], "alrp": [0.35, 0.31, 0.40]})
    runs.append({"loss": "alrp", "seed": 7, "metrics": {"AP": 0.9}})  # no focal run with seed 7
    assert paired_differences(runs, "alrp", "focal", "AP") == pytest.approx([0.05, -0.01])


def test_verdicts_by_hand():
    # mean 0.02, sd 0.01, n 3: t(0.975, 2) = 4.303 -> half width 0.02484: the interval contains 0
    mean, half, result = verdict([0.01, 0.02, 0.03])
    assert mean == pytest.approx(0.02) and half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert result == "within noise at this scale"
    assert verdict([0.05, 0.06, 0.07])[2] == "holds"
    assert verdict([-0.05, -0.06, -0.07])[2] == "does not hold"
    assert verdict([0.05])[2] == "within noise at this scale" and math.isnan(verdict([0.05])[1])
    assert verdict([])[2] == "not measured"
    # oLRP: lower is better, so a fall supports "loss > baseline"
    assert verdict([-0.05, -0.06, -0.07], metric="oLRP")[2] == "holds"


def test_a_claim_from_runs():
    claim = Claim("aLRP > AP-Loss", "alrp", "ap", "AP", "+3.4")
    result = evaluate_claim(claim, _runs({"ap": [0.30, 0.31, 0.29], "alrp": [0.36, 0.37, 0.34]}))
    assert result.differences == pytest.approx([0.06, 0.06, 0.05]) and result.verdict == "holds"


def test_every_published_claim_names_losses_of_the_pipeline():
    from detlosses.models import LOSS_NAMES

    for claim in PAPERS_CLAIMS:
        assert claim.loss in LOSS_NAMES and claim.baseline in LOSS_NAMES and claim.published
