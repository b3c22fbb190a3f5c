"""Bad input the command line once answered with a traceback or a vague message: each ends in one
``error: ...`` line naming the problem (exit code 2), before any training starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detlosses.cli import app
from detlosses.training.config import config_keys_help

TINY = ("--data", "synthetic:images=4,size=32", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
        "--set", "fpn_channels=16", "--set", "progress_bar=false")


def _error(*args: str) -> str:
    """Run the CLI; it must end with exit code 2 and one error line, no traceback. Returns stderr."""
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in (result.stdout + result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    return " ".join(result.stderr.split())  # the terminal may wrap the line


def test_validation_turned_off_is_refused_before_training(tmp_path: Path) -> None:
    run = tmp_path / "run"
    message = _error("train", *TINY, "--set", "limit_val_batches=0", "--out", str(run))
    assert "limit_val_batches=0 turns off validation" in message
    assert not (run / "checkpoints").exists()  # refused up front: nothing was trained


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    message = _error("train", "--config", str(tmp_path), "--out", str(tmp_path / "run"))
    assert f"config file {tmp_path} is a directory, expected a YAML file" in message


def test_config_that_is_not_text(tmp_path: Path) -> None:
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    message = _error("train", "--config", str(binary), "--out", str(tmp_path / "run"))
    assert f"config file {binary} is not a text (YAML) file" in message


def test_unknown_accelerator(tmp_path: Path) -> None:
    message = _error("train", *TINY, "--accelerator", "tpu", "--out", str(tmp_path / "run"))
    assert "accelerator must be one of auto, cpu, gpu, cuda, mps, got 'tpu'" in message


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b""], ids=["text", "empty"])
def test_eval_of_a_file_that_is_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(content)
    message = _error("eval", "--checkpoint", str(fake))
    assert f"{fake} is not a detlosses checkpoint" in message


def test_eval_of_a_torch_file_that_is_not_a_training_checkpoint(tmp_path: Path) -> None:
    tensors = tmp_path / "tensors.pt"
    torch.save([torch.zeros(2)], tensors)
    assert f"{tensors} is not a detlosses checkpoint (it holds a list)" in _error("eval", "--checkpoint", str(tensors))
    weights = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, weights)
    assert f"{weights} is not a detlosses training checkpoint" in _error("eval", "--checkpoint", str(weights))


def test_eval_of_a_directory(tmp_path: Path) -> None:
    message = _error("eval", "--checkpoint", str(tmp_path))
    assert f"checkpoint {tmp_path} is a directory" in message


def test_bad_loss_option_value_names_its_key(tmp_path: Path) -> None:
    message = _error("train", *TINY, "--loss", "ap", "--set", "loss_options.delta=abc", "--out", str(tmp_path / "r"))
    assert "loss_options.delta='abc' is not valid for loss 'ap'" in message
    message = _error("train", *TINY, "--set", "loss_options.delta=1", "--out", str(tmp_path / "r"))
    assert "loss_options.delta=1 is not valid for loss 'focal'" in message and "unexpected keyword" in message


def test_bad_nested_loss_option_names_its_key(tmp_path: Path) -> None:
    message = _error("train", *TINY, "--model", "faster_rcnn", "--loss", "ap", "--set", "loss_options.rpn.delta=x",
                     "--out", str(tmp_path / "r"))
    assert "loss_options.rpn.delta='x' is not valid for loss 'ap'" in message


def test_pap_params_that_is_a_directory(tmp_path: Path) -> None:
    message = _error("train", *TINY, "--loss", "pap", "--pap-params", str(tmp_path), "--out", str(tmp_path / "r"))
    assert f"pap_params {tmp_path} is a directory, expected a file" in message


def test_out_that_is_a_file(tmp_path: Path) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    message = _error("train", *TINY, "--out", str(existing))
    assert f"output path {existing} is a file, not a directory" in message and "Errno" not in message
    message = _error("train", *TINY, "--out", str(existing / "run"))
    assert f"lies under {existing}, which is a file, not a directory" in message
    assert existing.read_text() == "keep me\n"


def test_compare_out_that_is_a_file(tmp_path: Path) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("")
    message = _error("compare", "--losses", "focal", *TINY, "--out", str(existing))
    assert f"output path {existing} is a file, not a directory" in message


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("warmup_ratio=-0.1", "warmup_ratio"), ("warmup_iters=-1", "warmup_iters must be >= 0"),
     ("gradient_clip=-1", "gradient_clip must be a finite number >= 0"), ("score_thresh=1.5", "score_thresh"),
     ("lr=.nan", "lr must be a finite number > 0, got nan"), ("lr=0", "lr must be a finite number > 0, got 0.0")],
)
def test_out_of_range_values(tmp_path: Path, setting: str, expected: str) -> None:
    message = _error("train", *TINY, "--set", setting, "--out", str(tmp_path / "run"))
    assert expected in message and not (tmp_path / "run").exists()


def test_help_labels_list_types_alike() -> None:
    text = config_keys_help()
    assert "anchor_ratios (list of float) = [0.5, 1.0, 2.0]" in text
    assert "lr_steps (list of int|null) = None" in text
    assert "a list of" not in text and "fpn_channels (int) = 256" in text


@pytest.mark.parametrize("error, expected", [
    (PermissionError(13, "Permission denied", "/data/run"), "error: Permission denied: /data/run"),
    (OSError(28, "No space left on device", "/data/run/last.ckpt"),
     "error: No space left on device writing /data/run/last.ckpt"),
])
def test_environment_errors_are_one_line(error: OSError, expected: str, capsys) -> None:
    """An unwritable or full disk is the user's environment, not a bug: one line, exit code 2."""
    from detlosses.cli import _run

    def job():
        raise error

    import typer

    with pytest.raises(typer.Exit) as exit_info:
        _run(job)
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.strip() == expected and "Traceback" not in err


def test_a_programming_error_is_not_hidden() -> None:
    from detlosses.cli import _run

    def job():
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        _run(job)
