"""Micro searches on tiny synthetic data: end to end on SQLite, kill and resume, two workers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

import detlosses
from detlosses.losses import load_pap_params
from detlosses.search import SearchConfig, open_study, run_search
from detlosses.training import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("search")]

BASE = dict(data="synthetic:images=12,size=64", image_size=64, batch_size=4, fpn_channels=32, lr=0.005,
            warmup_iters=1, progress_bar=False)


def micro(out: Path, **changes) -> SearchConfig:
    settings = dict(base=TrainConfig(**BASE), out=str(out), rounds=2, samples_per_round=2, budget=2,
                    poll_interval=0.2)
    settings.update(changes)
    return SearchConfig(**settings)


def test_micro_search_end_to_end(tmp_path):
    result = run_search(micro(tmp_path / "s"))
    out = result.out
    summary = json.loads((out / "rounds.json").read_text())
    assert len(summary["rounds"]) == 2 and all(len(r["rewards"]) == 2 for r in summary["rounds"])
    assert (out / "search_split.json").is_file() and (out / "study.db").is_file()
    assert (out / "plots" / "reward_per_round.png").is_file() and (out / "plots" / "learned_functions.png").is_file()
    assert "round" in (out / "search.md").read_text()
    # the params file round-trips into the loss, with the searched reg_weight
    params = load_pap_params(result.best_params)
    assert params.control_points.shape == (5, 12) and params.reg_weight > 0
    logits = torch.randn(200, 3, dtype=torch.float64)
    targets = (torch.rand(200, 3) < 0.05).long()
    ious = torch.rand(200, 3, dtype=torch.float64)
    a = detlosses.parameterized_ap_loss(logits, targets, ious, params=params)
    b = detlosses.parameterized_ap_loss(logits, targets, ious, params=params.control_points)
    torch.testing.assert_close(a, b)
    # the proxy runs used the split, the budget and the sampled parameters
    trial_dirs = sorted((out / "trials").iterdir())
    config = (trial_dirs[0] / "config.yaml").read_text()
    assert "max_steps: 2" in config and "search_split" in config and "reg_weight" in config


def _complete(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as connection:
            return connection.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _cli_search(out: Path, *extra: str, samples: int = 2, budget: int = 2) -> list[str]:
    return [sys.executable, "-m", "detlosses.cli", "search", "--data", "synthetic:images=12,size=64",
            "--image-size", "64", "--batch-size", "4", "--rounds", "2", "--samples-per-round", str(samples),
            "--budget", str(budget), "--out", str(out), "--set", "fpn_channels=32", "--set", "warmup_iters=1",
            "--set", "progress_bar=false", *extra]


def test_killed_search_resumes_with_its_trials(tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_cli_search(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _complete(out / "study.db") < 1:
        time.sleep(0.2)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    config = micro(out)
    before = {t.number: (t.params, t.value) for t in open_study(config).trials if t.state.name == "COMPLETE"}
    assert before
    done = subprocess.run(_cli_search(out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = open_study(config).trials
    after = {t.number: (t.params, t.value) for t in trials if t.state.name == "COMPLETE"}
    for number, record in before.items():
        assert after[number] == record  # finished trials are kept as they were
    assert len(after) >= 4
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert (out / "best_params.json").is_file()


def test_two_workers_share_one_study(tmp_path):
    out = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = _cli_search(out, "--workers", "2", samples=3, budget=12)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = open_study(micro(out, workers=2, samples_per_round=3, budget=12))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rounds = {}
    for trial in complete:
        rounds.setdefault(trial.user_attrs["ppo_round"], []).append(trial)
    assert sorted(rounds) == [0, 1] and all(len(v) >= 3 for v in rounds.values())
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params)  # no trial ran twice
    assert len({t.number for t in complete}) == len(complete)
    pids = {t.user_attrs["worker"]["pid"] for t in complete}
    assert len(pids) == 2  # both workers did trials


def test_settings_mismatch_is_refused(tmp_path):
    config = micro(tmp_path / "m")
    open_study(config)
    with pytest.raises(ValueError, match="created with other settings"):
        open_study(micro(tmp_path / "m", rounds=3))
