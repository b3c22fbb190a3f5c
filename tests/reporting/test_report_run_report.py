"""write_run_report: report.md with the tables, the correlation and links to existing PNGs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from detlosses.reporting import plot_score_vs_iou, write_run_report

from .report_data import write_gradient_norms, write_lightning_csv


def linked_images(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_full_report(tmp_path: Path, evaluation, run_metrics) -> None:
    _, details = evaluation
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_lightning_csv(run_dir / "metrics.csv")
    write_gradient_norms(run_dir / "gradient_norms.json")

    report = write_run_report(run_dir, run_metrics, details)
    assert report == run_dir / "report.md"
    text = report.read_text()
    assert text.startswith("# Run report: rank_sort\n")
    # run settings, nested values as compact JSON
    assert "| model | retinanet_mobilenet_v2 |" in text
    assert '| optimizer | {"name": "SGD", "lr": 0.01} |' in text
    # metrics table: percentages with one decimal, APl undefined -> n/a, seconds per iteration
    assert "| AP | AP50 | AP75 | APs | APm | APl | oLRP | oLRP_loc | oLRP_FP | oLRP_FN | s / iteration |" in text
    assert f"| {100 * run_metrics['AP']:.1f} | {100 * run_metrics['AP50']:.1f} |" in text
    assert f"| n/a | {100 * run_metrics['oLRP']:.1f} |" in text
    assert "0.0842 s |" in text
    # per-class table, the class without ground truth shows n/a
    c7 = run_metrics["per_class"]["class_7"]
    assert (
        f"| class_7 | {c7['n_gt']} | {100 * c7['AP']:.1f} | {100 * c7['AP50']:.1f} | {100 * c7['oLRP']:.1f} | "
        f"{100 * c7['oLRP_loc']:.1f} | {100 * c7['oLRP_FP']:.1f} | {100 * c7['oLRP_FN']:.1f} | "
        f"{c7['lrp_threshold']:.3f} | {c7['n_tp']} / {c7['n_fp']} / {c7['n_fn']} |"
    ) in text
    assert "| class_40 | 0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0 / 0 / 0 |" in text
    # Spearman correlation, same value as the plot function
    rho = plot_score_vs_iou(details.matches, tmp_path / "check.png")
    assert f"**ρ = {rho:.3f}**" in text
    # every plot is linked relatively and exists
    links = linked_images(report)
    assert sorted(links) == sorted(
        f"plots/{name}"
        for name in ("training_curves.png", "precision_recall.png", "lrp_components.png", "score_vs_iou.png",
                     "gradient_norms.png")
    )
    for link in links:
        assert (run_dir / link).stat().st_size > 5_000
    assert "GHM-C gradient-norm distribution" in text
    assert no_temp_files(run_dir)


def test_report_without_metrics_csv_or_ghm(tmp_path: Path, evaluation, run_metrics) -> None:
    _, details = evaluation
    report = write_run_report(tmp_path, run_metrics, details, title="Smoke run")
    text = report.read_text()
    assert text.startswith("# Smoke run\n")
    assert "`metrics.csv` not found" in text
    assert "GHM" not in text
    links = linked_images(report)
    assert "plots/training_curves.png" not in links and "plots/gradient_norms.png" not in links
    assert all((tmp_path / link).is_file() for link in links)
    assert no_temp_files(tmp_path)


def test_report_from_metrics_json_only(tmp_path: Path, run_metrics) -> None:
    """Regenerating a report from metrics.json alone (no details, NaN as null, no run info)."""
    del run_metrics["run"], run_metrics["seconds_per_iteration"]
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,oops,1.0\n")  # malformed log
    text = write_run_report(tmp_path, json.loads(json.dumps(run_metrics)), None).read_text()
    assert "No run settings" in text
    assert "Spearman's ρ: n/a (no evaluation details" in text
    assert "could not be plotted" in text and "line 2" in text
    assert linked_images(tmp_path / "report.md") == ["plots/lrp_components.png"]
    assert (tmp_path / "plots" / "lrp_components.png").is_file()


def test_report_overwrites_atomically(tmp_path: Path, run_metrics) -> None:
    write_run_report(tmp_path, run_metrics, None, title="first")
    write_run_report(tmp_path, run_metrics, None, title="second")
    assert (tmp_path / "report.md").read_text().startswith("# second\n")
    assert no_temp_files(tmp_path)


def test_report_missing_key(tmp_path: Path, evaluation, run_metrics) -> None:
    del run_metrics["AP75"]
    with pytest.raises(KeyError, match="'AP75'"):
        write_run_report(tmp_path, run_metrics, evaluation[1])
    assert not (tmp_path / "report.md").exists()
    run_metrics["AP75"] = 0.1
    del run_metrics["per_class"]["class_3"]["AP50"]
    with pytest.raises(KeyError, match="class_3.*'AP50'"):
        write_run_report(tmp_path, run_metrics, evaluation[1])
