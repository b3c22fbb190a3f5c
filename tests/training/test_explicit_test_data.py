"""An explicit ``--test-data``: ``detlosses train --test-data SPEC`` then ``detlosses eval --split test``
evaluates exactly the test images, not the validation or training images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detlosses.cli import app
from detlosses.data.specs import parse_data_spec
from detlosses.training import quiet_lightning

pytestmark = pytest.mark.slow

TRAIN = "synthetic:images=4,size=64,seed=1"
TEST = "synthetic:images=3,size=64,seed=7,empty=0"


@pytest.fixture(autouse=True)
def _quiet():
    quiet_lightning()
    torch.set_num_threads(1)


def _ok(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def _boxes(spec: str, split: str) -> int:
    data = parse_data_spec(spec, split)
    return sum(len(data.record(i).boxes) for i in range(len(data)))


def test_eval_split_test_reads_the_runs_test_data(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _ok("train", "--data", TRAIN, "--test-data", TEST, "--image-size", "64", "--batch-size", "4", "--epochs", "1",
        "--out", str(run), "--set", "fpn_channels=32", "--set", "warmup_iters=1", "--set", "progress_bar=false")
    checkpoint = run / "checkpoints" / "last.ckpt"

    result = _ok("eval", "--checkpoint", str(checkpoint), "--split", "test", "--out", str(tmp_path / "test-eval"))
    assert str(tmp_path / "test-eval" / "metrics.json") in " ".join(result.stdout.split())
    tested = json.loads((tmp_path / "test-eval" / "metrics.json").read_text())
    assert tested["num_images"] == 3 and tested["num_gt"] == _boxes(TEST, "test") > 0
    assert tested["run"]["data"] == f"{TEST} (split 'test')"

    _ok("eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "val-eval"))  # the run's own validation
    validated = json.loads((tmp_path / "val-eval" / "metrics.json").read_text())
    assert validated["num_images"] == 4 and validated["run"]["data"] == f"{TRAIN} (split 'val')"
    assert validated["num_gt"] == _boxes(TRAIN, "val")
