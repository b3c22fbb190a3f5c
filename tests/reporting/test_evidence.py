"""Claims against multi-seed runs: paired differences and the t-interval verdict."""

from __future__ import annotations

import math

import pytest

from detlosses.reporting.evidence import PAPERS_CLAIMS, VARIANTS, Claim, evaluate_claim, paired_differences, verdict


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

    def base(label):
        return VARIANTS[label][0] if label in VARIANTS else label

    for claim in PAPERS_CLAIMS:
        assert base(claim.loss) in LOSS_NAMES and base(claim.baseline) in LOSS_NAMES and claim.published
    assert all(loss in LOSS_NAMES and label not in LOSS_NAMES for label, (loss, _) in VARIANTS.items())


def test_evidence_tables_from_run_directories_with_a_variant(tmp_path):
    """``python -m benchmarks.evidence``: runs named ``<label>-seed<k>`` (a variant label included) give the
    mean table, the per-seed differences and the claims rows with their verdicts."""
    import json

    from benchmarks import evidence

    aps = {"focal": [0.30, 0.31, 0.29], "ghm": [0.25, 0.26, 0.24], "ghm_c_l1": [0.35, 0.36, 0.355]}
    for label, values in aps.items():
        for seed, ap in enumerate(values):
            run = tmp_path / "runs" / f"{label}-seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"AP": ap, "AP50": ap, "AP75": ap, "oLRP": 1 - ap,
                                                          "score_iou_spearman": 0.1, "seconds_per_iteration": 1.0}))
    out = tmp_path / "evidence.md"
    assert evidence.main(["--runs", f"bccd={tmp_path / 'runs'}", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "| ghm_c_l1 | 3 | 35.5 ± 0.5 |" in text
    assert "`ghm_c_l1` = ghm with GHM-C with focal's L1 box loss" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| GHM")}
    assert rows["GHM-C > focal (same box loss)"].endswith("| holds |")
    assert rows["GHM-R > the same detector's L1-type box loss"].endswith("| does not hold |")
    searched = next(line for line in text.splitlines() if line.startswith("| Parameterized AP: functions searched"))
    assert searched.endswith("| no paired runs | not measured |")
