"""summarize_runs / write_comparison on hand-made numbers: mean, sample std, relative time, n/a."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from detlosses.evaluation import to_jsonable
from detlosses.reporting import load_run, summarize_runs, write_comparison
from detlosses.reporting.comparison import SUMMARY_METRICS


def metrics(ap: float, spi: float, **overrides: Any) -> dict[str, Any]:
    values = {key: 0.5 for key in SUMMARY_METRICS}
    values.update(AP=ap, seconds_per_iteration=spi, APl=None, **overrides)  # APl undefined (null in JSON)
    return values


def two_by_two(tmp_path: Path | None = None) -> list[dict[str, Any]]:
    runs = [
        {"loss": "ap_loss", "seed": 1, "metrics": metrics(0.36, 0.18, oLRP=0.70)},
        {"loss": "focal", "seed": 0, "metrics": metrics(0.30, 0.10, oLRP=0.80)},
        {"loss": "ap_loss", "seed": 0, "metrics": metrics(0.40, 0.30, oLRP=0.66)},
        {"loss": "focal", "seed": 1, "metrics": metrics(0.34, 0.14, oLRP=0.76)},
    ]
    for run in runs:
        run["run_dir"] = None if tmp_path is None else tmp_path / "runs" / f"{run['loss']}_s{run['seed']}"
    return runs


def test_mean_std_and_relative_time() -> None:
    summary = summarize_runs(two_by_two())
    assert list(summary["losses"]) == ["focal", "ap_loss"]  # reference first
    focal, ap_loss = summary["losses"]["focal"], summary["losses"]["ap_loss"]
    assert focal["seeds"] == [0, 1] and ap_loss["seeds"] == [0, 1]
    assert focal["AP"]["mean"] == pytest.approx(0.32)
    assert focal["AP"]["std"] == pytest.approx(math.sqrt(2 * 0.02**2))  # sample std, ddof = 1
    assert ap_loss["AP"]["mean"] == pytest.approx(0.38)
    assert ap_loss["AP"]["values"] == pytest.approx([0.40, 0.36])  # ordered by seed
    assert ap_loss["oLRP"]["mean"] == pytest.approx(0.68)
    assert focal["seconds_per_iteration"]["mean"] == pytest.approx(0.12)
    assert focal["relative_time"] == pytest.approx(1.0)
    assert ap_loss["relative_time"] == pytest.approx(0.24 / 0.12)
    assert math.isnan(focal["APl"]["mean"]) and focal["APl"]["n"] == 0


def test_one_seed_has_zero_std_and_partial_nan() -> None:
    runs = [
        {"loss": "focal", "seed": 0, "metrics": metrics(0.3, 0.1, APs=float("nan"))},
        {"loss": "focal", "seed": 1, "metrics": metrics(0.3, 0.1, APs=0.2)},
        {"loss": "ghm", "seed": 0, "metrics": metrics(0.25, 0.15)},
    ]
    summary = summarize_runs(runs)
    assert summary["losses"]["ghm"]["AP"] == {"mean": 0.25, "std": 0.0, "n": 1, "values": [0.25]}
    aps = summary["losses"]["focal"]["APs"]
    assert (aps["mean"], aps["std"], aps["n"]) == (pytest.approx(0.2), 0.0, 1)
    assert summary["losses"]["ghm"]["relative_time"] == pytest.approx(1.5)


def test_missing_focal_gives_na() -> None:
    runs = [run for run in two_by_two() if run["loss"] != "focal"]
    summary = summarize_runs(runs)
    assert summary["losses"]["ap_loss"]["relative_time"] == "n/a"


def test_bad_runs() -> None:
    with pytest.raises(ValueError, match="no runs"):
        summarize_runs([])
    runs = two_by_two()
    runs[3]["seed"] = 0
    with pytest.raises(ValueError, match="'focal' with seed 0 appears twice"):
        summarize_runs(runs)
    runs = two_by_two()
    del runs[2]["metrics"]["oLRP_FN"]
    with pytest.raises(KeyError, match=r"runs\[2\] loss='ap_loss' seed=0: metrics have no key 'oLRP_FN'"):
        summarize_runs(runs)
    with pytest.raises(KeyError, match="'metrics'"):
        summarize_runs([{"loss": "focal", "seed": 0}])


def test_write_comparison(tmp_path: Path) -> None:
    runs = two_by_two(tmp_path)
    for run in runs[:3]:  # the last run has no report
        run["run_dir"].mkdir(parents=True)
        (run["run_dir"] / "report.md").write_text("# report\n")
    out_dir = tmp_path / "comparison"
    path = write_comparison(out_dir, runs)
    assert path == out_dir / "comparison.md"
    text = path.read_text()
    rows = text.split("## Individual runs")[0].splitlines()  # the summary table, not the per-run one
    focal = next(line for line in rows if line.startswith("| focal |"))
    ap_loss = next(line for line in rows if line.startswith("| ap_loss |"))
    assert "| 32.0 ± 2.8 |" in focal and "| **38.0 ± 2.8** |" in ap_loss  # best AP in bold
    assert "| 78.0 ± 2.8 |" in focal and "| **68.0 ± 2.8** |" in ap_loss  # best (lowest) oLRP in bold
    assert "| n/a |" in focal  # APl undefined
    assert "| 1.00× |" in focal and "| 2.00× |" in ap_loss
    assert "0.1200 ± 0.0283" in focal
    assert "[seed 0](../runs/focal_s0/report.md)" in focal
    assert "seed 1 (no report.md)" in focal
    assert "[seed 0](../runs/ap_loss_s0/report.md), [seed 1](../runs/ap_loss_s1/report.md)" in ap_loss
    assert "![AP, AP50, AP75 and oLRP per loss](comparison.png)" in text
    assert (out_dir / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out_dir / "comparison.json").read_text())
    assert data["losses"]["focal"]["AP"]["mean"] == pytest.approx(0.32)
    assert data["losses"]["focal"]["APl"]["mean"] is None
    assert data["losses"]["ap_loss"]["relative_time"] == pytest.approx(2.0)
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]


def test_write_comparison_without_focal(tmp_path: Path) -> None:
    runs = [run for run in two_by_two() if run["loss"] != "focal"]
    text = write_comparison(tmp_path, runs).read_text()
    assert "no `focal` run" in text
    ap_row = next(line for line in text.splitlines() if line.startswith("| ap_loss |"))
    assert ap_row.split(" | ")[-2] == "n/a"
    assert json.loads((tmp_path / "comparison.json").read_text())["losses"]["ap_loss"]["relative_time"] == "n/a"


def test_load_run(tmp_path: Path) -> None:
    payload = dict(metrics(0.3, 0.1), loss="focal", run={"seed": 3, "loss": "focal"})
    (tmp_path / "metrics.json").write_text(json.dumps(to_jsonable(payload)))
    run = load_run(tmp_path)
    assert (run["loss"], run["seed"], run["run_dir"]) == ("focal", 3, tmp_path)
    assert summarize_runs([run])["losses"]["focal"]["relative_time"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_run(tmp_path / "nope")
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": "focal"}))
    with pytest.raises(KeyError, match="seed"):
        load_run(tmp_path)


def _timing(**overrides: Any) -> dict[str, Any]:
    timing = {"host": "h", "device": "cpu x", "accelerator": "cpu", "torch_threads": 2, "precision": "32-true",
              "world_size": 1, "torch": "2.14.1", "iterations_timed": 40, "warmup_iterations_skipped": 5,
              "load_average": 2.0, "shared": False}
    timing.update(overrides)
    return timing


def test_times_are_comparable_only_under_the_same_conditions(tmp_path) -> None:
    runs = two_by_two()
    for run in runs:
        run["metrics"]["timing"] = _timing()
    assert summarize_runs(runs)["timing"] == {"comparable": True, "notes": []}
    runs[0]["metrics"]["timing"] = _timing(torch_threads=1)
    runs[1]["metrics"]["timing"] = _timing(shared=True, load_average=3.4)
    runs[2]["metrics"]["timing"] = _timing(iterations_timed=0)
    del runs[3]["metrics"]["timing"]
    timing = summarize_runs(runs)["timing"]
    assert not timing["comparable"]
    text = "\n".join(timing["notes"])
    assert "torch_threads differs" in text and "ap_loss seed 1: 1" in text
    assert "focal seed 0: other work ran beside it (mean load average 3.4" in text
    assert "ap_loss seed 0: too short to time" in text
    assert "focal seed 1: no timing record" in text
    markdown = write_comparison(tmp_path, runs).read_text()
    assert "not measured under the same conditions" in markdown and "torch_threads differs" in markdown
