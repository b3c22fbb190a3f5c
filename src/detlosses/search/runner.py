"""``detlosses search``: the Parameterized AP Loss search, its settings and its worker processes.

The study (storage, sampler) is :mod:`.study`; what a finished search writes is :mod:`.results`.
``workers`` processes on this machine work on the same study. Killing the search
loses nothing finished: run the same command again and it continues (a killed worker's trial is
sampled again). At the end it writes ``best_params.json`` (a params file for
``detlosses train --loss pap --pap-params``), ``rounds.json``, ``search.md`` and plots.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ..training import TrainConfig, quiet_lightning
from .ppo import PPOSettings, sigma_for_round
from .proxy import make_search_split, proxy_config, run_proxy
from .sampler import (
    WORKER_ATTR,
    PPOSampler,
    closed_rounds,
    enqueue_own_trial,
    fail_dead_local_trials,
    fail_unrun_trials,
)
from .space import SearchSpace
from .study import SAMPLERS, finished, open_study, quiet_optuna

__all__ = ["SearchConfig", "SearchResult", "run_search"]

LOG = logging.getLogger("detlosses.search")


@dataclass
class SearchConfig:
    """A search: the proxy task (``base`` training config, ``budget`` iterations), the policy
    (``rounds`` x ``samples_per_round``) and where the study lives."""

    base: TrainConfig
    out: str = "runs/search"
    rounds: int = 40
    samples_per_round: int = 8
    budget: int = 200
    sampler: str = "ppo"
    storage: str | None = None
    study_name: str = "pap-search"
    workers: int = 1
    seed: int = 0
    val_fraction: float = 0.2
    functions: int = 5
    search_reg_weight: bool = True
    ppo: dict[str, Any] = field(default_factory=dict)
    poll_interval: float = 2.0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.rounds < 1 or self.samples_per_round < 1 or self.budget < 1 or self.workers < 1:
            raise ValueError("rounds, samples_per_round, budget and workers must be >= 1")

    @property
    def settings(self) -> PPOSettings:
        return PPOSettings(rounds=self.rounds, samples_per_round=self.samples_per_round, **self.ppo)

    @property
    def space(self) -> SearchSpace:
        stages = ("rpn", "rcnn") if self.base.model == "faster_rcnn" else ()
        return SearchSpace(self.functions, self.search_reg_weight, stages)

    @property
    def total_trials(self) -> int:
        return self.rounds * self.samples_per_round

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


@dataclass
class SearchResult:
    out: Path
    best_params: Path
    summary: dict[str, Any]


def _objective(config: SearchConfig, split_file: Path):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})
        theta = [trial.suggest_float(name, 0.0, 1.0) for name in config.space.names]
        space = config.space
        params = space.to_stage_params(theta) if space.stages else space.to_params(theta)
        run_dir = Path(config.out) / "trials" / f"trial-{trial.number:04d}"
        proxy = proxy_config(config.base, params, split_file, config.budget, run_dir, config.seed)
        result = run_proxy(proxy)
        for key in ("AP", "AP50", "diverged", "seconds_per_iteration"):
            trial.set_user_attr(key, result[key])
        if isinstance(params, dict):
            for stage, stage_params in params.items():
                trial.set_user_attr(f"{stage}_reg_weight", stage_params.reg_weight)
        else:
            trial.set_user_attr("reg_weight", params.reg_weight)
        return result["reward"]

    return objective


def _report_rounds(study: optuna.Study, config: SearchConfig, printed: set[int]) -> None:
    trials = study.get_trials(deepcopy=False)
    if config.sampler == "ppo":
        groups = closed_rounds(trials, config.settings)
    else:
        done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        m = config.samples_per_round
        groups = [done[i:i + m] for i in range(0, len(done) - m + 1, m)]
    for index, group in enumerate(groups):
        if index in printed:
            continue
        printed.add(index)
        rewards = [float(t.value) for t in group]
        line = (f"round {index + 1}/{config.rounds}: best {100 * max(rewards):.1f} AP, "
                f"mean {100 * sum(rewards) / len(rewards):.1f} AP")
        if config.sampler == "ppo":
            mean = study.user_attrs.get(f"ppo_mean_after_round_{index}")
            if mean is None and isinstance(study.sampler, PPOSampler) and index + 1 < config.rounds:
                mean = [float(v) for v in study.sampler.policy_logits(study, index + 1)]
            if mean is not None:
                theta = torch.sigmoid(torch.tensor(mean, dtype=torch.float64))
                reg = 10 ** (2 * float(theta[-1]) - 1) if config.search_reg_weight else 1.0
                shift = float((theta - config.space.initial_mean()).abs().mean())
                line += f", mean |theta - identity| {shift:.3f}, reg_weight {reg:.2f}"
            line += f", sigma {sigma_for_round(config.settings, index):.3f}"
        LOG.info(line)


def worker_loop(config: SearchConfig, worker: int, report: bool) -> None:
    """Run trials on the shared study until the search is done."""
    quiet_lightning()
    quiet_optuna()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))
    study = open_study(config, worker)
    split_file = Path(config.out) / "search_split.json"
    printed: set[int] = set()
    objective = _objective(config, split_file)
    fail_dead_local_trials(study)
    while not finished(study, config):
        enqueue_own_trial(study)
        try:
            study.optimize(objective, n_trials=1, catch=())
        except optuna.exceptions.OptunaError as err:
            if "already done" in str(err):
                break
            raise
        if report:
            _report_rounds(study, config, printed)
    if report:
        _report_rounds(study, config, printed)


def _spawned_worker(config: SearchConfig, worker: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    worker_loop(config, worker, report=False)


def run_search(config: SearchConfig) -> SearchResult:
    """Run (or continue) the search with ``config.workers`` processes; write the results."""
    quiet_optuna()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    make_search_split(config.base.data, config.base.train_split, config.val_fraction, config.seed,
                      out / "search_split.json")
    open_study(config)  # create it (and check the settings) before the workers start
    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=_spawned_worker, args=(config, w), daemon=False)
               for w in range(1, config.workers)]
    for process in helpers:
        process.start()
        time.sleep(0.5)
    try:
        worker_loop(config, 0, report=True)
    finally:
        for process in helpers:
            process.join()
    failed = [p.exitcode for p in helpers if p.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"{len(failed)} search worker(s) failed (exit codes {failed})")
    study = open_study(config)
    if finished(study, config):
        fail_unrun_trials(study)
    from .results import write_results

    return write_results(config)
