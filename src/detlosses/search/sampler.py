"""The PPO search as an Optuna sampler: the study (trials, rewards, policy) lives in Optuna storage.

Trials are grouped in rounds of ``M`` samples. A trial is assigned to the earliest round that
still has a free slot once every earlier round is *closed* (its ``M`` lowest-numbered trials have
finished); if the current round is full but not closed, the sampler waits for it. The policy
mean after each closed round is computed by :func:`~detlosses.search.ppo.ppo_update` from that
round's ``M`` trials — deterministically, so every worker (process or machine) sharing the
storage replays the same policy; it is also cached in the study's user attributes.

Stale trials (a killed worker's) are failed so that their slots are sampled again: through
Optuna's heartbeat for RDB storages, and for workers on this host by checking their process id.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from .ppo import PPOSettings, TruncatedNormal, logit, ppo_update, sigma_for_round
from .space import SearchSpace

__all__ = ["PPOSampler", "round_of", "closed_rounds", "fail_dead_local_trials", "record_worker", "enqueue_own_trial",
           "fail_unrun_trials", "WORKER_ATTR",
           "ROUND_ATTR"]

ROUND_ATTR = "ppo_round"
WORKER_ATTR = "worker"
_MEAN_ATTR = "ppo_mean_after_round_{}"


def round_of(trial: FrozenTrial) -> int | None:
    value = trial.user_attrs.get(ROUND_ATTR)
    return None if value is None else int(value)


def _round_members(trials: Sequence[FrozenTrial], round_index: int) -> list[FrozenTrial]:
    members = [t for t in trials if round_of(t) == round_index and t.state != TrialState.FAIL]
    return sorted(members, key=lambda t: t.number)


def closed_rounds(trials: Sequence[FrozenTrial], settings: PPOSettings) -> list[list[FrozenTrial]]:
    """The consecutive closed rounds from round 0, each as its ``M`` (lowest-numbered) trials."""
    closed = []
    for r in range(settings.rounds):
        members = _round_members(trials, r)[: settings.samples_per_round]
        if len(members) < settings.samples_per_round or any(t.state != TrialState.COMPLETE for t in members):
            break
        closed.append(members)
    return closed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A RUNNING trial that names no worker this long after it started was orphaned: its process died
# between creating it and recording itself (both happen within milliseconds, see record_worker).
ORPHAN_SECONDS = 60.0


def this_worker() -> dict[str, Any]:
    """This process as a search worker: host name and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def enqueue_own_trial(study: optuna.Study) -> None:
    """Create the next trial as WAITING with this worker already recorded, in one storage write.

    ``study.optimize`` pops it (WAITING -> RUNNING is atomic in every Optuna storage), so no trial
    is ever RUNNING without a worker, whenever the process is killed. A WAITING trial left by a
    killed worker is simply popped and run by the next one (then none is added).
    """
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return
    study.enqueue_trial({}, user_attrs={WORKER_ATTR: this_worker()})


def record_worker(study: optuna.Study, trial_id: int) -> None:
    """Record this process as the worker of a trial (host and pid), right after it is created."""
    study._storage.set_trial_user_attr(trial_id, WORKER_ATTR, this_worker())


def fail_unrun_trials(study: optuna.Study) -> int:
    """Fail the WAITING trials left once a search is finished (a killed worker's, never to run)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for trial in waiting:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(waiting)


def fail_dead_local_trials(study: optuna.Study) -> int:
    """Fail RUNNING trials whose worker process (on this host) no longer exists, and orphans (no
    worker recorded ``ORPHAN_SECONDS`` after they started)."""
    host = socket.gethostname()
    now = datetime.datetime.now()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR) or {}
        dead = worker.get("host") == host and worker.get("pid") and not _process_alive(int(worker["pid"]))
        orphan = not worker and trial.datetime_start is not None and (
            now - trial.datetime_start).total_seconds() > ORPHAN_SECONDS
        if dead or orphan:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            failed += 1
    return failed


class PPOSampler(optuna.samplers.BaseSampler):
    """Truncated-normal policy with PPO-clip updates of its mean, round by round.

    Args:
        space: the search variables.
        settings: rounds, samples per round and PPO constants.
        seed: sample ``k`` of the study is drawn from ``seed`` and the trial number.
        poll_interval: seconds between checks while waiting for a round to close.
        wait_timeout: give up waiting after this many seconds (``None``: wait for ever).
        on_wait: called while waiting (e.g. to fail stale trials).
    """

    def __init__(
        self,
        space: SearchSpace,
        settings: PPOSettings,
        seed: int = 0,
        poll_interval: float = 1.0,
        wait_timeout: float | None = None,
        on_wait: Callable[[optuna.Study], Any] | None = None,
    ) -> None:
        self.space = space
        self.settings = settings
        self.seed = int(seed)
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.on_wait = on_wait
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    # ------------------------------------------------------------------ Optuna API
    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # before any waiting for a round: a killed worker's trial is then always recognisable
        record_worker(study, trial._trial_id)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: FloatDistribution(0.0, 1.0) for name in self.space.names}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        round_index = self._claim_round(study, trial)
        mean = torch.sigmoid(self.policy_logits(study, round_index))
        sigma = torch.full_like(mean, sigma_for_round(self.settings, round_index))
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + trial.number) % (2**63 - 1))
        theta = TruncatedNormal(mean, sigma).sample(1, generator)[0]
        return {name: float(value) for name, value in zip(self.space.names, theta, strict=True)}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # ------------------------------------------------------------------ policy
    def policy_logits(self, study: optuna.Study, round_index: int) -> torch.Tensor:
        """Mean logits used to sample round ``round_index`` (replaying the closed rounds)."""
        mu = logit(self.space.initial_mean())
        if round_index == 0:
            return mu
        cached = study.user_attrs.get(_MEAN_ATTR.format(round_index - 1))
        if cached is not None:
            return torch.tensor(cached, dtype=torch.float64)
        rounds = closed_rounds(study.get_trials(deepcopy=False), self.settings)
        if len(rounds) < round_index:
            raise RuntimeError(f"round {round_index - 1} is not closed yet")
        for r in range(round_index):
            cached = study.user_attrs.get(_MEAN_ATTR.format(r))
            if cached is not None:
                mu = torch.tensor(cached, dtype=torch.float64)
                continue
            thetas = torch.stack([self.space.vector(t.params) for t in rounds[r]])
            rewards = torch.tensor([float(t.value) for t in rounds[r]], dtype=torch.float64)
            mu = ppo_update(mu, thetas, rewards, self.settings, r)
            study.set_user_attr(_MEAN_ATTR.format(r), [float(v) for v in mu])
        return mu

    def _claim_round(self, study: optuna.Study, trial: FrozenTrial) -> int:
        started = time.monotonic()
        while True:
            trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
            closed = len(closed_rounds(trials, self.settings))
            if closed >= self.settings.rounds:
                raise optuna.exceptions.OptunaError("every round of the search is already done")
            members = _round_members(trials, closed)
            if len(members) < self.settings.samples_per_round:
                study._storage.set_trial_user_attr(trial._trial_id, ROUND_ATTR, closed)
                return closed
            if self.on_wait is not None:
                self.on_wait(study)
            if self.wait_timeout is not None and time.monotonic() - started > self.wait_timeout:
                raise TimeoutError(f"round {closed} did not close within {self.wait_timeout} s")
            time.sleep(self.poll_interval)
