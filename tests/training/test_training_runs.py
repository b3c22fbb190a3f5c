"""Tiny end-to-end runs: resuming, the training log, the report's settings, progress lines, empty
validation ground truth, evaluation on the right data and compare's reuse rule."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from tests.data.conftest import build_coco

from detlosses.training import TrainConfig, compare, evaluate_checkpoint, quiet_lightning, train

TINY = dict(data="synthetic:images=8,size=64", image_size=64, batch_size=4, epochs=2, warmup_iters=1,
            fpn_channels=32, progress_bar=False, log_every=1, lr=0.005)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _quiet():
    quiet_lightning()
    torch.set_num_threads(1)


def _coco(folder: Path, n: int, first_id: int, boxes: bool) -> str:
    images = [{"id": first_id + i, "file_name": f"im{first_id + i}.jpg", "width": 64, "height": 64} for i in range(n)]
    annotations = [{"id": i + 1, "image_id": image["id"], "category_id": 1, "bbox": [8, 8, 24, 24], "iscrowd": 0}
                   for i, image in enumerate(images)] if boxes else []
    annotation_json, images_dir = build_coco(folder, images, annotations, [{"id": 1, "name": "cell"}])
    return f"coco:{annotation_json}:{images_dir}"


def test_resume_needs_a_run_unless_resume_or_start(tmp_path: Path, caplog) -> None:
    config = TrainConfig(out=str(tmp_path / "run"), **TINY)
    with pytest.raises(FileNotFoundError, match="holds no run to resume.*--resume-or-start"):
        train(config, resume=True)
    assert not (tmp_path / "run" / "checkpoints").exists()
    with caplog.at_level("INFO", logger="detlosses"):
        result = train(config, resume_or_start=True)
    assert "holds no run to resume; starting a new run there" in caplog.text  # said, not silent
    assert (result.run_dir / "metrics.json").is_file()


def test_one_log_point_per_validated_epoch_and_overrides_in_the_report(tmp_path: Path, capsys) -> None:
    config = TrainConfig(out=str(tmp_path / "run"), **{**TINY, "progress_bar": True})
    result = train(config)
    with (result.run_dir / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/AP")]
    assert [int(row["epoch"]) for row in rows] == [0, 1]  # no extra point for the final evaluation
    assert float(rows[-1]["val/AP"]) == pytest.approx(result.metrics["AP"], abs=1e-7)
    run = result.metrics["run"]
    assert run["fpn_channels"] == 32 and run["warmup_iters"] == 1 and "out" not in run
    report = (result.run_dir / "report.md").read_text()
    assert "| fpn_channels | 32 |" in report and "| warmup_iters | 1 |" in report
    assert "validation data" in report
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  step 2  loss ")
    assert " lr " in lines[0] and " s/it" in lines[0] and "val AP " in lines[0]


def test_validation_without_ground_truth_trains_and_says_metrics_are_undefined(tmp_path: Path, caplog) -> None:
    train_spec = _coco(tmp_path / "train", 4, 1, boxes=True)
    val_spec = _coco(tmp_path / "val", 2, 50, boxes=False)
    config = TrainConfig(val_data=val_spec, out=str(tmp_path / "run"), **{**TINY, "batch_size": 2, "data": train_spec})
    result = train(config)
    assert "no ground-truth box" in caplog.text
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["AP"] is None and metrics["num_gt"] == 0
    assert (result.run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (result.run_dir / "checkpoints" / "best.ckpt").exists()

    checkpoint = result.run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="validation images are the training images"):
        evaluate_checkpoint(checkpoint, split="test", out=tmp_path / "test-eval")  # coco: test = the training file
    evaluated = evaluate_checkpoint(checkpoint, split="test", out=tmp_path / "test-eval", allow_train_as_val=True)
    assert evaluated.metrics["num_gt"] == 4
    own = evaluate_checkpoint(checkpoint, out=tmp_path / "own-eval")
    assert own.metrics["num_gt"] == 0 and math.isnan(own.metrics["AP"])


def test_compare_reuses_only_runs_with_the_same_settings_and_records_them(tmp_path: Path) -> None:
    base = TrainConfig(limit_train_batches=1, **{**TINY, "epochs": 1})
    path, runs = compare(base, ["focal"], [0], tmp_path / "cmp")
    text = path.read_text()
    assert "## Data and settings" in text and "synthetic:images=8,size=64" in text and "| fpn_channels | 32 |" in text
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["settings"]["fpn_channels"] == 32
    other = TrainConfig(limit_train_batches=1, **{**TINY, "epochs": 1, "data": "synthetic:images=12,size=64"})
    with pytest.raises(ValueError, match=r"(?s)trained with other data or settings.*data: 'synthetic:images=8"):
        compare(other, ["focal"], [0], tmp_path / "cmp")
    before = (tmp_path / "cmp" / "focal-seed0" / "metrics.json").stat().st_mtime
    compare(dataclassed(base, progress_bar=True), ["focal"], [0], tmp_path / "cmp")  # display keys do not matter
    assert (tmp_path / "cmp" / "focal-seed0" / "metrics.json").stat().st_mtime == before


def test_resume_refuses_a_run_trained_otherwise(tmp_path: Path) -> None:
    config = TrainConfig(out=str(tmp_path / "run"), limit_train_batches=1, **{**TINY, "epochs": 1})
    train(config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["fpn_channels"] == 32
    with pytest.raises(ValueError, match="lr: 0.005 \\(saved\\) vs 0.01 \\(now\\)"):
        train(dataclassed(config, lr=0.01), resume=True)


def dataclassed(config: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
