"""Each plot function writes a non-empty PNG from realistic inputs, and fails clearly on bad ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from detlosses.evaluation import to_jsonable
from detlosses.reporting import (
    plot_comparison,
    plot_gradient_norm_histogram,
    plot_lrp_components,
    plot_precision_recall,
    plot_score_vs_iou,
    plot_training_curves,
    read_training_log,
    summarize_runs,
)

from .report_data import gradient_norms, write_gradient_norms, write_lightning_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000  # a real figure, not an empty canvas
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_training_log_reads_lightning_sparse_rows(tmp_path: Path) -> None:
    log = read_training_log(write_lightning_csv(tmp_path / "metrics.csv", epochs=4, steps_per_epoch=50, log_every=5))
    assert log.loss_columns == ["train/loss", "train/loss_cls", "train/loss_box"]
    assert log.val_columns == ["val/AP", "val/oLRP"]
    assert log.lr_columns == ["lr-SGD"]
    steps, loss = log.series("train/loss")
    assert steps.shape == (40,) and steps[0] == 0 and steps[-1] == 195
    assert np.isnan(loss[3]) and int(np.isnan(loss).sum()) == 1  # the logged NaN is kept, empty cells are not
    epochs, ap = log.per_epoch("val/AP")
    np.testing.assert_array_equal(epochs, [0, 1, 2, 3])
    np.testing.assert_allclose(ap, [0.1, 0.15, 0.2, 0.25])
    with pytest.raises(KeyError, match="val/nope"):
        log.series("val/nope")


def test_training_log_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_training_log(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,step,train/loss\n0,0,abc\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2, column 'train/loss'"):
        read_training_log(bad)
    no_step = tmp_path / "no_step.csv"
    no_step.write_text("epoch,train/loss\n0,1.0\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        read_training_log(no_step)


def test_plot_training_curves(tmp_path: Path) -> None:
    csv_path = write_lightning_csv(tmp_path / "metrics.csv")
    out = plot_training_curves(csv_path, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    assert_png(out)


def test_training_log_truncated_last_row(tmp_path: Path) -> None:
    csv_path = write_lightning_csv(tmp_path / "metrics.csv")
    text = csv_path.read_text()
    assert text.endswith("3,,199,,,,0.25,0.81\n")
    csv_path.write_text(text[:-5])  # an interrupted write cuts the last row after "0.25,"
    log = read_training_log(csv_path)
    assert log.per_epoch("val/AP")[1][-1] == 0.25
    assert log.per_epoch("val/oLRP")[0].tolist() == [0, 1, 2]  # the last cell is missing, not garbage


def test_plot_training_curves_nothing_to_plot(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,0,\n")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_training_curves(path, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_plot_precision_recall(tmp_path: Path, evaluation) -> None:
    _, details = evaluation
    assert_png(plot_precision_recall(details.coco, tmp_path / "pr.png"))
    assert_png(plot_precision_recall(details, tmp_path / "pr_details.png"))
    with pytest.raises(KeyError, match="precision_iou50"):
        plot_precision_recall({"recall_thresholds": [0.0], "category_names": []}, tmp_path / "x.png")


def test_plot_lrp_components_from_result_and_metrics_json(tmp_path: Path, evaluation) -> None:
    metrics, details = evaluation
    assert_png(plot_lrp_components(details.lrp, tmp_path / "lrp.png"))
    from_json = json.loads(json.dumps(to_jsonable(metrics)))  # NaN -> None, as read from metrics.json
    assert_png(plot_lrp_components(from_json, tmp_path / "lrp_json.png"))
    del from_json["per_class"]["class_3"]["oLRP_FN"]
    with pytest.raises(KeyError, match="class_3.*oLRP_FN"):
        plot_lrp_components(from_json, tmp_path / "bad.png")


def test_plot_score_vs_iou_matches_scipy(tmp_path: Path, evaluation) -> None:
    _, details = evaluation
    rho = plot_score_vs_iou(details.matches, tmp_path / "score_iou.png")
    assert_png(tmp_path / "score_iou.png")
    scores = np.concatenate([c.scores[c.is_tp] for c in details.matches.categories.values()])
    ious = np.concatenate([c.ious[c.is_tp] for c in details.matches.categories.values()])
    assert scores.size >= 3
    assert rho == pytest.approx(spearmanr(scores, ious).statistic, abs=1e-12)
    assert plot_score_vs_iou(details, tmp_path / "again.png") == pytest.approx(rho, abs=1e-12)


def test_plot_gradient_norm_histogram(tmp_path: Path) -> None:
    path = write_gradient_norms(tmp_path / "gradient_norms.json")
    assert_png(plot_gradient_norm_histogram(path, tmp_path / "ghm.png"))
    assert_png(plot_gradient_norm_histogram(gradient_norms(n_epochs=1), tmp_path / "ghm_one_epoch.png"))


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda d: d.pop("edges"), KeyError, "'edges'"),
        (lambda d: d["epochs"][1].pop("counts"), KeyError, r"epochs\[1\].*'counts'"),
        (lambda d: d["epochs"][2].update(counts=[1, 2, 3]), ValueError, "3 values for 30 bins"),
        (lambda d: d.update(epochs=[]), ValueError, "non-empty"),
    ],
)
def test_plot_gradient_norm_histogram_bad_input(tmp_path: Path, mutate, error, match) -> None:
    data = gradient_norms()
    mutate(data)
    path = tmp_path / "gradient_norms.json"
    path.write_text(json.dumps(data))
    with pytest.raises(error, match=match):
        plot_gradient_norm_histogram(path, tmp_path / "ghm.png")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        plot_gradient_norm_histogram(tmp_path / "missing.json", tmp_path / "ghm.png")


def test_plot_comparison(tmp_path: Path, evaluation) -> None:
    metrics = dict(evaluation[0], seconds_per_iteration=0.1)
    runs = [
        {"loss": loss, "seed": seed, "metrics": dict(metrics, AP=metrics["AP"] + 0.01 * (i + seed)), "run_dir": None}
        for i, loss in enumerate(["focal", "ap_loss", "alrp"])
        for seed in (0, 1)
    ]
    runs[-1]["metrics"]["AP75"] = math.nan
    runs[-2]["metrics"]["AP75"] = math.nan  # alrp: AP75 undefined for every seed -> "n/a" bar
    assert_png(plot_comparison(summarize_runs(runs), tmp_path / "comparison.png"))
    with pytest.raises(KeyError, match="losses"):
        plot_comparison({}, tmp_path / "x.png")


def test_plots_leave_no_pyplot_figures(tmp_path: Path, evaluation) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_lrp_components(evaluation[1].lrp, tmp_path / "lrp.png")
    assert plt.get_fignums() == before
