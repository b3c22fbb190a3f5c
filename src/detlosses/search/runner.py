"""``detlosses search``: the Parameterized AP Loss search on Optuna storage.

One study per output folder (default storage ``sqlite:///<out>/study.db``; any Optuna RDB URL
such as PostgreSQL, or ``journal:<file>`` for a journal file, lets several processes or machines
share it). ``workers`` processes on this machine work on the same study. Killing the search
loses nothing finished: run the same command again and it continues (a killed worker's trial is
sampled again). At the end it writes ``best_params.json`` (a params file for
``detlosses train --loss pap --pap-params``), ``rounds.json``, ``search.md`` and plots.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ..losses.pap_params import PAPParams, save_pap_params
from ..training import TrainConfig, quiet_lightning
from .ppo import PPOSettings, sigma_for_round
from .proxy import make_search_split, proxy_config, run_proxy
from .sampler import WORKER_ATTR, PPOSampler, closed_rounds, fail_dead_local_trials
from .space import SearchSpace

__all__ = ["SearchConfig", "SearchResult", "run_search", "open_study", "SAMPLERS"]

LOG = logging.getLogger("detlosses.search")
SAMPLERS = ("ppo", "tpe", "cmaes")


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
        return SearchSpace(self.functions, self.search_reg_weight)

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


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                          engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                          else None)
    raise ValueError(f"unsupported storage {url!r}: use an Optuna RDB URL (sqlite:///..., postgresql://...) "
                     "or journal:<file>")


def _make_sampler(config: SearchConfig, worker: int) -> optuna.samplers.BaseSampler:
    if config.sampler == "ppo":
        def on_wait(study: optuna.Study) -> None:
            fail_dead_local_trials(study)
            if isinstance(study._storage, optuna.storages.RDBStorage):
                optuna.storages.fail_stale_trials(study)

        return PPOSampler(config.space, config.settings, seed=config.seed, poll_interval=config.poll_interval,
                          on_wait=on_wait)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed + worker, multivariate=True)
    return optuna.samplers.CmaEsSampler(seed=config.seed + worker, x0={n: float(v) for n, v in zip(
        config.space.names, config.space.initial_mean(), strict=True)}, sigma0=config.settings.sigma0)


def open_study(config: SearchConfig, worker: int = 0) -> optuna.Study:
    """Create or load the study; the settings it was created with must match."""
    Path(config.out).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=_storage(config.storage_url()), study_name=config.study_name, direction="maximize",
        sampler=_make_sampler(config, worker), load_if_exists=True,
    )
    identity = {"sampler": config.sampler, "rounds": config.rounds, "samples_per_round": config.samples_per_round,
                "budget": config.budget, "space": config.space.names, "data": config.base.data, "seed": config.seed}
    saved = study.user_attrs.get("search")
    if saved is None:
        study.set_user_attr("search", identity)
    elif saved != identity:
        changed = sorted(k for k in identity if saved.get(k) != identity[k])
        raise ValueError(f"study {config.study_name!r} in {config.storage_url()} was created with other settings "
                         f"({', '.join(changed)}); use another --out/--storage or the same settings")
    return study


def _finished(study: optuna.Study, config: SearchConfig) -> bool:
    trials = study.get_trials(deepcopy=False)
    if config.sampler == "ppo":
        return len(closed_rounds(trials, config.settings)) >= config.rounds
    return sum(t.state == TrialState.COMPLETE for t in trials) >= config.total_trials


def _objective(config: SearchConfig, split_file: Path):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})
        theta = [trial.suggest_float(name, 0.0, 1.0) for name in config.space.names]
        params = config.space.to_params(theta)
        run_dir = Path(config.out) / "trials" / f"trial-{trial.number:04d}"
        proxy = proxy_config(config.base, params, split_file, config.budget, run_dir, config.seed)
        result = run_proxy(proxy)
        for key in ("AP", "AP50", "diverged", "seconds_per_iteration"):
            trial.set_user_attr(key, result[key])
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
    _quiet_optuna()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))
    study = open_study(config, worker)
    split_file = Path(config.out) / "search_split.json"
    printed: set[int] = set()
    objective = _objective(config, split_file)
    fail_dead_local_trials(study)
    while not _finished(study, config):
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
    _quiet_optuna()
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
    return write_results(config)


def _final_theta(study: optuna.Study, config: SearchConfig) -> tuple[torch.Tensor, str]:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if config.sampler == "ppo" and isinstance(study.sampler, PPOSampler):
        rounds = closed_rounds(study.get_trials(deepcopy=False), config.settings)
        if rounds:
            return torch.sigmoid(study.sampler.policy_logits(study, len(rounds))), "final policy mean"
    best = max(complete, key=lambda t: t.value)
    return config.space.vector(best.params), f"best trial #{best.number}"


def write_results(config: SearchConfig) -> SearchResult:
    """``best_params.json``, ``best_sample_params.json``, ``rounds.json``, plots and ``search.md``."""
    out = Path(config.out)
    study = open_study(config)
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    if not complete:
        raise RuntimeError("the search has no finished trial yet")
    theta, source = _final_theta(study, config)
    params = config.space.to_params(theta, {"source": f"detlosses search ({config.sampler}, {source})",
                                            "rounds": config.rounds, "samples_per_round": config.samples_per_round,
                                            "budget": config.budget, "data": config.base.data})
    best_params = save_pap_params(params, out / "best_params.json")
    best = max(complete, key=lambda t: t.value)
    save_pap_params(config.space.to_params(config.space.vector(best.params),
                                           {"source": f"best sample, trial #{best.number}", "reward": best.value}),
                    out / "best_sample_params.json")
    rounds = []
    if config.sampler == "ppo":
        groups = closed_rounds(trials, config.settings)
    else:
        groups = [complete[i:i + config.samples_per_round] for i in range(0, len(complete), config.samples_per_round)]
    for index, group in enumerate(groups):
        rewards = [float(t.value) for t in group]
        entry = {"round": index, "trials": [t.number for t in group], "rewards": rewards,
                 "mean_reward": sum(rewards) / len(rewards), "best_reward": max(rewards)}
        if config.sampler == "ppo":
            entry["sigma"] = sigma_for_round(config.settings, index)
        rounds.append(entry)
    summary = {"sampler": config.sampler, "trials": len(complete), "rounds": rounds, "best_trial": best.number,
               "best_reward": best.value, "best_params": str(best_params), "source": source,
               "aborted": sum(bool(t.user_attrs.get("diverged")) for t in complete)}
    (out / "rounds.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        from .plots import plot_learned_functions, plot_rewards
    except ImportError:  # matplotlib is part of the [train] extra
        plots = {}
    else:
        plots = {"rewards": plot_rewards(rounds, out / "plots" / "reward_per_round.png"),
                 "functions": plot_learned_functions(params, out / "plots" / "learned_functions.png")}
    _write_markdown(out / "search.md", config, summary, params, plots)
    return SearchResult(out, best_params, summary)


def _write_markdown(path: Path, config: SearchConfig, summary: dict, params: PAPParams, plots: dict) -> None:
    lines = [
        "# Parameterized AP Loss search", "",
        f"Sampler `{config.sampler}`, {summary['trials']} finished trials "
        f"({config.rounds} rounds x {config.samples_per_round} samples planned), proxy budget "
        f"{config.budget} iterations on `{config.base.data}` ({config.base.model}, {config.base.backbone}).",
        f"Aborted trials (NaN or loss stuck at 1.0, reward 0): {summary['aborted']}.", "",
        f"Parameters written to `best_params.json`: {summary['source']}, reg_weight {params.reg_weight:.3f}. "
        f"Best sample: trial #{summary['best_trial']} with AP {100 * summary['best_reward']:.1f}.", "",
        "| round | mean AP | best AP |", "| ---: | ---: | ---: |",
    ]
    lines += [f"| {r['round'] + 1} | {100 * r['mean_reward']:.1f} | {100 * r['best_reward']:.1f} |"
              for r in summary["rounds"]]
    for title, png in plots.items():
        lines += ["", f"![{title}](plots/{Path(png).name})"]
    path.write_text("\n".join(lines) + "\n")

