"""The PPO policy of the search: truncated normal, sigma schedule, clipped updates, convergence."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from detlosses.search import PPOSampler, PPOSettings, SearchSpace, TruncatedNormal, ppo_update, sigma_for_round
from detlosses.search.ppo import clipped_objective, logit


def test_truncated_normal_samples_stay_in_range_and_density_integrates_to_one():
    dist = TruncatedNormal(torch.tensor([0.05, 0.5, 0.97], dtype=torch.float64), torch.tensor(0.2))
    samples = dist.sample(20000, torch.Generator().manual_seed(0))
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None].expand(-1, 3)
    mass = torch.trapezoid(dist.log_prob(grid).exp(), grid[:, 0], dim=0)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert math.isinf(float(dist.log_prob(torch.tensor([[1.5, 0.5, 0.5]], dtype=torch.float64))[0, 0]))


def test_sigma_shrinks_linearly_to_zero():
    settings = PPOSettings(rounds=4, sigma0=0.2)
    assert [sigma_for_round(settings, t) for t in range(5)] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0])


def test_update_is_deterministic_and_moves_to_the_rewarded_sample():
    settings = PPOSettings(rounds=10, samples_per_round=2)
    mu = logit(torch.full((6,), 0.5, dtype=torch.float64))
    thetas = torch.tensor([[0.7] * 6, [0.3] * 6], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    new = ppo_update(mu, thetas, rewards, settings, 0)
    torch.testing.assert_close(new, ppo_update(mu, thetas, rewards, settings, 0), rtol=0, atol=0)
    assert bool((torch.sigmoid(new) > 0.5).all())


def test_clipping_bounds_hold_per_dimension():
    sigma = torch.tensor(0.2, dtype=torch.float64)
    old_mu = logit(torch.full((3,), 0.5, dtype=torch.float64))
    theta = torch.tensor([[0.8, 0.8, 0.8]], dtype=torch.float64)
    old_lp = TruncatedNormal(torch.sigmoid(old_mu), sigma).log_prob(theta)
    # dimension 0 moved far towards the rewarded sample (ratio > 1.1), the others only slightly
    mu = logit(torch.tensor([0.75, 0.505, 0.5], dtype=torch.float64)).requires_grad_(True)
    change = TruncatedNormal(torch.sigmoid(mu), sigma).log_prob(theta) - old_lp
    assert float(change[0, 0].detach()) > math.log(1.1) and float(change[0, 1].detach()) < math.log(1.1)
    objective = clipped_objective(mu, theta, torch.tensor([1.0], dtype=torch.float64), old_lp, sigma, 0.1)
    (grad,) = torch.autograd.grad(objective, mu)
    assert float(grad[0]) == 0.0  # clipped: no further push beyond the bound
    assert float(grad[1]) > 0.0 and float(grad[2]) > 0.0
    # the clipped ratio stays within the per-dimension bounds
    clipped = change.detach().clamp(math.log(0.9), math.log(1.1))
    assert float(clipped.max()) <= math.log(1.1) and float(clipped.min()) >= math.log(0.9)


def test_means_move_to_the_optimum_of_a_quadratic_reward():
    space = SearchSpace(functions=4, search_reg_weight=True)
    optimum = torch.rand(space.dimension, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    optimum = 0.25 + 0.5 * optimum
    settings = PPOSettings(rounds=12, samples_per_round=8, sigma0=0.2)
    sampler = PPOSampler(space, settings, seed=0, poll_interval=0.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def reward(trial: optuna.Trial) -> float:
        theta = torch.tensor([trial.suggest_float(n, 0, 1) for n in space.names], dtype=torch.float64)
        return float(1.0 - ((theta - optimum) ** 2).sum())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(reward, n_trials=settings.rounds * settings.samples_per_round)
    start = (space.initial_mean() - optimum).abs().mean()
    final = (torch.sigmoid(sampler.policy_logits(study, settings.rounds)) - optimum).abs().mean()
    assert float(final) < 0.75 * float(start)
    rounds = {t.user_attrs["ppo_round"] for t in study.trials}
    assert rounds == set(range(settings.rounds))
    # the samples of a round spread as that round's sigma says
    late = torch.stack([space.vector(t.params) for t in study.trials if t.user_attrs["ppo_round"] == 0])
    assert 0.1 < float(late.std(0).mean()) < 0.25
