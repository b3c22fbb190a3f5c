"""The papers' claims against multi-seed runs: paired differences per seed and a verdict per claim.

A claim says that a loss beats a baseline loss on a metric (e.g. "aLRP > AP-Loss" on AP). With the
same seeds for both losses, the evidence is the per-seed difference ``d_s = m(loss, s) - m(baseline, s)``
(same seed: same data order, initialisation and split, so the pairing removes their share of the
noise). Over the ``n`` shared seeds, with mean ``d`` and sample std ``sd``, the two-sided Student-t
interval at ``confidence`` is ``d +- t_{n-1} sd / sqrt(n)``, and the verdict is

* **holds** when the whole interval lies on the claimed side of 0,
* **does not hold** when it lies on the other side,
* **within noise at this scale** otherwise (including ``n < 2``: one seed cannot tell),
* **not measured** without a pair of runs.

For oLRP-type metrics lower is better, so a claim "A > B" on them means ``d < 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

__all__ = ["Claim", "ClaimResult", "PAPERS_CLAIMS", "VARIANTS", "evaluate_claim", "paired_differences", "verdict"]

HOLDS, DOES_NOT_HOLD = "holds", "does not hold"
WITHIN_NOISE, NOT_MEASURED = "within noise at this scale", "not measured"


@dataclass(frozen=True)
class Claim:
    """``loss`` beats ``baseline`` on ``metric`` (``published``: the paper's own effect, for the table)."""

    text: str
    loss: str
    baseline: str
    metric: str
    published: str


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    differences: list[float]
    mean: float
    half_width: float
    verdict: str


VARIANTS: dict[str, tuple[str, str]] = {
    "ghm_c_l1": ("ghm", "GHM-C with focal's L1 box loss (`--set loss_options.box_loss=delta`)"),
    "pap_linear": ("pap", "the `linear` (identity) functions (`--set loss_options.params=linear`)"),
    "pap_searched": ("pap", "functions searched here on the same data (`--pap-params best_params.json`)"),
}
"""Run labels that are one loss with other options: ``label -> (loss, what differs)``. A controlled
run is stored as ``<label>-seed<k>`` beside the losses' own runs."""

PAPERS_CLAIMS: tuple[Claim, ...] = (
    Claim("AP-Loss > focal", "ap", "focal", "AP",
          "AP-Loss paper: above focal on RetinaNet (its own runs); the Param-AP repo's re-run: 35.4 vs 37.5 (COCO)"),
    Claim("aLRP > AP-Loss", "alrp", "ap", "AP", "+3.4 AP (38.9 vs 35.5, RetinaNet500, COCO minival)"),
    Claim("Parameterized AP >= aLRP", "pap", "alrp", "AP", "+1.5 AP (40.5 vs 39.0, RetinaNet R50, COCO)"),
    Claim("GHM-C + GHM-R > focal + smooth-L1", "ghm", "focal", "AP", "+1.4 AP (37.0 vs 35.6, RetinaNet 1x, minival)"),
    Claim("GHM-C > focal (same box loss)", "ghm_c_l1", "focal", "AP",
          "+0.2 AP (35.8 vs 35.6 with smooth-L1, RetinaNet 1x, minival)"),
    Claim("GHM-R > the same detector's L1-type box loss", "ghm", "ghm_c_l1", "AP",
          "+1.2 AP (GHM-C + GHM-R 37.0 vs GHM-C + smooth-L1 35.8)"),
    Claim("Parameterized AP: searched functions >= linear", "pap", "pap_linear", "AP",
          "searched functions (the released RetinaNet set, 40.5 AP on COCO) above every handcrafted "
          "form (paper; no `linear` number in docs/losses.md)"),
    Claim("Parameterized AP: functions searched here >= linear", "pap_searched", "pap_linear", "AP",
          "the paper's search: 40 rounds x 8 proxies on COCO; here 4 x 4 short proxies on the same data"),
    Claim("IoU-balanced raises AP75 over focal", "iou_balanced", "focal", "AP75", "+1.0 to +2.4 AP75 (test-dev)"),
    Claim("Rank & Sort > focal", "rank_sort", "focal", "AP", "about +3 AP at 12 epochs (RS-ATSS 39.9, COCO)"),
    Claim("aLRP: scores follow IoU more (Spearman rho) than focal", "alrp", "focal", "score_iou_spearman",
          "aLRP and IoU-balanced papers: ranking by IoU-aware targets correlates score and IoU"),
    Claim("Rank & Sort: scores follow IoU more than focal", "rank_sort", "focal", "score_iou_spearman",
          "RS paper: sorting positives by IoU"),
    Claim("IoU-balanced: scores follow IoU more than focal", "iou_balanced", "focal", "score_iou_spearman",
          "IoU-balanced paper: the motivation of IoU-weighted classification"),
)
"""The claims the issue names, as published (COCO numbers from ``../shared/docs/losses.md``)."""


def _lower_is_better(metric: str) -> bool:
    return metric.startswith("oLRP")


def paired_differences(runs: Sequence[Mapping[str, Any]], loss: str, baseline: str, metric: str) -> list[float]:
    """``m(loss, s) - m(baseline, s)`` for every seed ``s`` both losses ran with a finite value, by seed.

    Args:
        runs: ``{"loss", "seed", "metrics"}`` per run (as for :func:`~detlosses.reporting.summarize_runs`).
    """
    values: dict[tuple[str, int], float] = {}
    for run in runs:
        value = run["metrics"].get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[run["loss"], int(run["seed"])] = float(value)
    seeds = sorted({s for (name, s) in values if name == loss} & {s for (name, s) in values if name == baseline})
    return [values[loss, s] - values[baseline, s] for s in seeds]


def verdict(differences: Sequence[float], metric: str = "AP", confidence: float = 0.95) -> tuple[float, float, str]:
    """``(mean, half width of the t interval, verdict)`` of paired differences for a claim "loss > baseline"."""
    n = len(differences)
    if n == 0:
        return math.nan, math.nan, NOT_MEASURED
    mean = sum(differences) / n
    if n < 2:
        return mean, math.nan, WITHIN_NOISE
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    sign = -1.0 if _lower_is_better(metric) else 1.0
    low, high = sign * mean - half, sign * mean + half
    if low > 0:
        return mean, half, HOLDS
    if high < 0:
        return mean, half, DOES_NOT_HOLD
    return mean, half, WITHIN_NOISE


def evaluate_claim(claim: Claim, runs: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> ClaimResult:
    """The claim's paired differences over ``runs`` and its verdict."""
    differences = paired_differences(runs, claim.loss, claim.baseline, claim.metric)
    mean, half, result = verdict(differences, claim.metric, confidence)
    return ClaimResult(claim, differences, mean, half, result)
