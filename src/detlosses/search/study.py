"""The search's Optuna study: storage, sampler choice, settings check, completion.

One study per output folder (default storage ``sqlite:///<out>/study.db``; any Optuna RDB URL such
as PostgreSQL, or ``journal:<file>`` for a journal file, lets several processes or machines share
it); the sampler is the PPO policy of the Parameterized AP Loss paper (:mod:`.sampler`) or one of
Optuna's own.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from .sampler import PPOSampler, closed_rounds, fail_dead_local_trials

if TYPE_CHECKING:
    from .runner import SearchConfig

__all__ = ["SAMPLERS", "quiet_optuna", "open_storage", "make_sampler", "open_study", "finished"]

SAMPLERS = ("ppo", "tpe", "cmaes")


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        with warnings.catch_warnings():  # the heartbeat (which fails a killed worker's trials) is ours to choose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                              engine_kwargs={"connect_args": {"timeout": 60}}
                                              if url.startswith("sqlite") else None)
    raise ValueError(f"unsupported storage {url!r}: use an Optuna RDB URL (sqlite:///..., postgresql://...) "
                     "or journal:<file>")


def make_sampler(config: SearchConfig, worker: int) -> optuna.samplers.BaseSampler:
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
        storage=open_storage(config.storage_url()), study_name=config.study_name, direction="maximize",
        sampler=make_sampler(config, worker), load_if_exists=True,
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


def finished(study: optuna.Study, config: SearchConfig) -> bool:
    trials = study.get_trials(deepcopy=False)
    if config.sampler == "ppo":
        return len(closed_rounds(trials, config.settings)) >= config.rounds
    return sum(t.state == TrialState.COMPLETE for t in trials) >= config.total_trials
