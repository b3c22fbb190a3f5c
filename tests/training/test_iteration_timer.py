"""IterationTimer: the median of steady-state iterations, warm-up per process, the conditions recorded."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from detlosses.training import callbacks
from detlosses.training.callbacks import IterationTimer


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(timer: IterationTimer, clock: _Clock, durations: list[float], load: float = 1.0, threads: int = 1,
         monkeypatch=None) -> None:
    trainer = SimpleNamespace(precision="32-true", world_size=1)
    module = SimpleNamespace(device=torch.device("cpu"))
    monkeypatch.setattr(callbacks.time, "perf_counter", clock)
    monkeypatch.setattr(callbacks.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(callbacks.torch, "get_num_threads", lambda: threads)
    timer.on_train_start(trainer, module)
    for seconds in durations:
        timer.on_train_batch_start(trainer, module, None, 0)
        clock.now += seconds
        timer.on_train_batch_end(trainer, module, None, None, 0)
        clock.now += 100.0  # data loading, validation, checkpoints: never timed


def test_median_of_the_iterations_after_warm_up(monkeypatch):
    timer = IterationTimer(skip=2)
    _run(timer, _Clock(), [11.2, 3.0, 0.5, 0.7, 0.6, 9.0, 0.4], monkeypatch=monkeypatch)
    assert timer.durations == pytest.approx([0.5, 0.7, 0.6, 9.0, 0.4])
    assert timer.seconds_per_iteration == pytest.approx(0.6)  # one slow step does not move it
    summary = timer.summary()
    assert summary["iterations_timed"] == 5 and summary["seconds_per_iteration"] == pytest.approx(0.6)
    assert summary["accelerator"] == "cpu" and summary["torch_threads"] == 1 and not summary["shared"]


def test_a_resumed_process_warms_up_again_and_keeps_earlier_durations(monkeypatch):
    first = IterationTimer(skip=1)
    _run(first, _Clock(), [5.0, 1.0, 1.0], monkeypatch=monkeypatch)
    resumed = IterationTimer(skip=1)
    resumed.load_state_dict(first.state_dict())
    _run(resumed, _Clock(), [7.0, 2.0, 2.0, 2.0], monkeypatch=monkeypatch)
    assert resumed.durations == pytest.approx([1.0, 1.0, 2.0, 2.0, 2.0])  # 7.0: the new process's warm-up
    assert resumed.seconds_per_iteration == pytest.approx(2.0)


def test_too_short_a_run_has_no_time(monkeypatch):
    timer = IterationTimer(skip=5)
    _run(timer, _Clock(), [11.2, 1.9], monkeypatch=monkeypatch)
    assert math.isnan(timer.seconds_per_iteration) and timer.summary()["iterations_timed"] == 0


def test_other_work_beside_the_run_is_recorded(monkeypatch):
    timer = IterationTimer(skip=0)
    _run(timer, _Clock(), [1.0, 1.0], load=3.1, threads=2, monkeypatch=monkeypatch)
    summary = timer.summary()
    assert summary["shared"] and summary["load_average"] == pytest.approx(3.1)
