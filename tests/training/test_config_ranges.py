"""Config values outside their meaningful range are refused with the key and value named; values that
only look alike (``1`` batch, ``1.0`` = all batches) are kept apart."""

from __future__ import annotations

import pytest

from detlosses.training import TrainConfig


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("warmup_ratio", -0.5, "warmup_ratio (the warm-up's starting share of lr) must lie in [0, 1], got -0.5"),
        ("warmup_ratio", 1.5, "warmup_ratio (the warm-up's starting share of lr) must lie in [0, 1], got 1.5"),
        ("warmup_iters", -1, "warmup_iters must be >= 0 (0: no warm-up), got -1"),
        ("gradient_clip", -2.0, "gradient_clip must be a finite number >= 0 or null (no clipping), got -2.0"),
        ("score_thresh", -0.1, "score_thresh must lie in [0, 1], got -0.1"),
        ("score_thresh", 1.1, "score_thresh must lie in [0, 1], got 1.1"),
        ("score_thresh", float("nan"), "score_thresh must lie in [0, 1], got nan"),
        ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
        ("lr", -0.01, "lr must be a finite number > 0, got -0.01"),
        ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
        ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
        ("epochs", 0, "epochs must be >= 1, got 0"),
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
        ("momentum", -0.1, "momentum must lie in [0, 1], got -0.1"),
        ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0, got -0.0001"),
        ("num_workers", -1, "num_workers must be >= 0, got -1"),
        ("lr_steps", [0, 3], "lr_steps must be epochs >= 1, got [0, 3]"),
        ("limit_train_batches", 1.5, "limit_train_batches must be a number of batches >= 1 or a fraction in (0, 1]"),
        ("limit_val_batches", -1, "limit_val_batches must be a number of batches >= 1 or a fraction in (0, 1]"),
        ("limit_val_batches", 0, "limit_val_batches=0 turns off validation"),
        ("limit_val_batches", 0.0, "limit_val_batches=0 turns off validation"),
        ("limit_train_batches", 0, "limit_train_batches=0 turns off training"),
        ("accelerator", "tpu", "accelerator must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"),
    ],
)
def test_out_of_range_values_are_refused(key: str, value, expected: str) -> None:
    with pytest.raises(ValueError) as error:
        TrainConfig(**{key: value})
    assert expected in str(error.value)


def test_edge_values_are_accepted() -> None:
    config = TrainConfig(warmup_ratio=0.0, warmup_iters=0, gradient_clip=0.0, score_thresh=0.0, momentum=0.0,
                         weight_decay=0.0, lr_steps=[], limit_val_batches=1, limit_train_batches=1.0)
    assert config.gradient_clip == 0.0 and config.lr_steps == []
    TrainConfig(gradient_clip=None, score_thresh=1.0, warmup_ratio=1.0, accelerator="cpu")


def test_a_fraction_of_one_stays_all_batches() -> None:
    """Lightning reads the int 1 as one batch and the float 1.0 as all of them: keep the type given."""
    config = TrainConfig(limit_train_batches=1.0, limit_val_batches=1)
    assert isinstance(config.limit_train_batches, float) and config.limit_train_batches == 1.0
    assert isinstance(config.limit_val_batches, int) and config.limit_val_batches == 1


def test_narrow_plain_head_is_warned_about() -> None:
    from detlosses.training.runner import narrow_plain_head_warning

    message = narrow_plain_head_warning(TrainConfig(head_norm="none", fpn_channels=64))
    assert message is not None and "fpn_channels=64" in message and "head_norm='group'" in message
    assert narrow_plain_head_warning(TrainConfig(head_norm="none", fpn_channels=256)) is None
    assert narrow_plain_head_warning(TrainConfig(head_norm="group", fpn_channels=64)) is None
    assert narrow_plain_head_warning(TrainConfig(model="ssd", fpn_channels=64)) is None
