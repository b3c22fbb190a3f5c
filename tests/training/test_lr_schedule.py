"""The learning-rate schedule, pinned step by step against values computed by hand: linear warm-up
from ``lr * warmup_ratio``, then ``lr``, then ``x0.1`` at each milestone epoch."""

from __future__ import annotations

import pytest
import torch

from detlosses.training import TrainConfig
from detlosses.training.module import lr_schedule


def _lrs(config: TrainConfig, steps_per_epoch: int, steps: int) -> list[float]:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=config.lr, momentum=config.momentum)
    scheduler = lr_schedule(optimizer, steps_per_epoch, config)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr of this step's optimiser update
        optimizer.step()
        scheduler.step()
    return seen


def test_warm_up_then_constant_then_tenfold_drops() -> None:
    # lr 0.1, warm-up over 4 iterations from 0.2 * lr, 5 iterations per epoch, drops after epochs 2 and 3
    config = TrainConfig(lr=0.1, warmup_iters=4, warmup_ratio=0.2, lr_steps=[2, 3], epochs=4)
    lrs = _lrs(config, steps_per_epoch=5, steps=20)
    expected = {
        0: 0.02,   # 0.1 * 0.2
        1: 0.04,   # 0.1 * (0.2 + 0.8 * 1/4)
        2: 0.06,   # 0.1 * (0.2 + 0.8 * 2/4)
        3: 0.08,   # 0.1 * (0.2 + 0.8 * 3/4)
        4: 0.1,    # warm-up over
        9: 0.1,    # last step of epoch 2 (index 1)
        10: 0.01,  # epoch 2 starts: first drop
        14: 0.01,
        15: 0.001,  # epoch 3 starts: second drop
        19: 0.001,
    }
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, rel=1e-9), (step, lrs)


def test_a_drop_inside_the_warm_up_multiplies_it() -> None:
    # warm-up over 12 iterations, milestone at epoch 2 = step 10 (5 steps per epoch)
    config = TrainConfig(lr=0.1, warmup_iters=12, warmup_ratio=0.2, lr_steps=[2], epochs=4)
    lrs = _lrs(config, steps_per_epoch=5, steps=16)
    assert lrs[9] == pytest.approx(0.1 * (0.2 + 0.8 * 9 / 12), rel=1e-9)   # 0.08
    assert lrs[10] == pytest.approx(0.01 * (0.2 + 0.8 * 10 / 12), rel=1e-9)  # 0.00866...
    assert lrs[12] == pytest.approx(0.01, rel=1e-9)
    assert lrs[15] == pytest.approx(0.01, rel=1e-9)


def test_no_warm_up_and_default_milestones() -> None:
    # warmup_iters=0: lr from the first step; default drops at round(0.75 * 8) = 6 and round(0.9 * 8) = 7
    config = TrainConfig(lr=0.02, warmup_iters=0, epochs=8)
    assert config.milestones == [6, 7]
    lrs = _lrs(config, steps_per_epoch=3, steps=24)
    assert lrs[0] == pytest.approx(0.02) and lrs[17] == pytest.approx(0.02)
    assert lrs[18] == pytest.approx(0.002) and lrs[20] == pytest.approx(0.002)
    assert lrs[21] == pytest.approx(0.0002) and lrs[23] == pytest.approx(0.0002)
