"""A killed search worker never leaves a trial RUNNING for ever (the trial carries its worker from
the storage write that creates it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from detlosses.search.sampler import WORKER_ATTR, enqueue_own_trial, fail_dead_local_trials, fail_unrun_trials

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _study(url: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=url, study_name="s", load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _die_after(url: str, code: str) -> None:
    """Run ``code`` on the study in another process that is then killed (exits at once, no clean-up)."""
    script = textwrap.dedent(f"""
        import os, optuna
        from detlosses.search.sampler import enqueue_own_trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage={url!r}, study_name="s", load_if_exists=True)
        {code}
        os._exit(9)
    """)
    subprocess.run([sys.executable, "-c", script], check=False, timeout=120)


def test_trial_killed_right_after_creation_is_failed(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _study(url)
    _die_after(url, "enqueue_own_trial(study); study.ask()")  # killed right after its trial started
    study = _study(url)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1 and running[0].user_attrs[WORKER_ATTR]["pid"]
    assert fail_dead_local_trials(study) == 1
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_trial_left_waiting_is_run_by_the_next_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _study(url)
    _die_after(url, "enqueue_own_trial(study)")  # killed between creating its trial and starting it
    study = _study(url)
    enqueue_own_trial(study)  # adds none: the waiting one is taken
    assert len(study.get_trials()) == 1
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def test_unrun_trials_are_failed_when_the_search_is_over(tmp_path):
    study = _study(f"sqlite:///{tmp_path / 'study.db'}")
    enqueue_own_trial(study)
    assert fail_unrun_trials(study) == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]
