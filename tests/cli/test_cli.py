"""The command line: bad input ends in one error line (never a traceback), help shows defaults and
the config keys at a readable width, and ``detlosses --help`` imports nothing heavy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.data.conftest import build_coco
from typer.testing import CliRunner

from detlosses.cli import _print_metrics, app

HEAVY = ("transformers", "torch", "torchvision", "lightning", "matplotlib", "faster_coco_eval", "optuna")


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in (result.stdout + result.stderr)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def test_set_value_of_the_wrong_type_is_one_clear_error(tmp_path: Path) -> None:
    result = _invoke("train", "--set", "fpn_channels=abc", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "config key 'fpn_channels' must be an integer, got 'abc' (str)" in result.stderr


def test_training_images_as_validation_images_are_refused(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 32} for i in (1, 2)]
    annotation_json, images_dir = build_coco(tmp_path, images, [], [{"id": 1, "name": "x"}])
    result = _invoke("train", "--data", f"coco:{annotation_json}:{images_dir}", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "the validation images are the training images" in result.stderr and "--val-data" in result.stderr


def test_nonexistent_voc_root(tmp_path: Path) -> None:
    result = _invoke("train", "--data", f"voc:{tmp_path / 'missing'}", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "data set root does not exist" in result.stderr


def test_resume_without_a_run_is_refused(tmp_path: Path) -> None:
    result = _invoke("train", "--resume", "--out", str(tmp_path / "empty"))
    assert result.exit_code == 2
    assert "holds no run to resume" in result.stderr and "--resume-or-start" in result.stderr


def test_bad_lightning_settings_are_one_clear_error(tmp_path: Path) -> None:
    result = _invoke("train", "--strategy", "no-such-strategy", "--data", "synthetic:images=4,size=32",
                     "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "no-such-strategy" in result.stderr


def test_undefined_metrics_are_explained(capsys) -> None:
    _print_metrics({"num_gt": 0, "AP": math.nan, "seconds_per_iteration": 0.5})
    out = capsys.readouterr().out
    assert "AP and LRP undefined: the evaluation data has no ground-truth box" in out and "0.500 s/it" in out


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    return subprocess.run([sys.executable, "-m", "detlosses.cli", *args], capture_output=True, text=True,
                          env={**environment, **(env or {})}, timeout=120)


def test_train_help_shows_defaults_and_config_keys_wider_than_80_columns() -> None:
    done = _cli("train", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    flat = " ".join(text.replace("│", " ").split())  # help cells may wrap: compare the words
    assert "(default: 12)" in flat and "(default: retinanet)" in flat and "(default: synthetic)" in flat
    assert "fpn_channels (int) = 256" in text and "val_fraction (float|null) = None" in text
    assert "--val-data" in text and "--resume-or-start" in text and "--allow-train-as-val" in text
    assert max(len(line) for line in text.splitlines()) > 80


def test_help_imports_no_heavy_module() -> None:
    code = ("import sys, json; from detlosses.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("command", ["eval", "compare", "search"])
def test_every_command_has_help(command: str) -> None:
    done = _cli(command, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout, done.stderr
