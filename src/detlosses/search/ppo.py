"""The policy of the Parameterized AP Loss search (Tao et al., 2021, Sec. 3.3; released code:
fundamentalvision/Parameterized-AP-Loss ``tools/search.py``).

Each of the ``D`` search variables ``theta_d in [0, 1]`` is drawn from an independent normal
distribution truncated to ``[0, 1]``, with a learned mean (stored as a logit ``mu``, so the mean is
``sigmoid(mu)``) and a standard deviation ``sigma`` that shrinks linearly to 0 over the rounds:
``sigma_t = sigma_0 (R - t) / R`` for round ``t = 0..R-1``.

After round ``t`` (``M`` samples ``theta_k`` with rewards ``r_k``) the mean is improved by PPO-clip:
advantages ``A_k = r_k - mean(r)``; with ``l_kd`` the log-density of ``theta_kd`` under the new policy
(mean ``sigmoid(mu)``, std ``sigma_{t+1}``; the round's own ``sigma_t`` for the last round) and
``l0_kd`` under the policy that drew the samples,

    ``ratio_k = exp(sum_d (l_kd - l0_kd))``, ``clipped_k = exp(sum_d clamp(l_kd - l0_kd, log(1-eps), log(1+eps)))``,
    ``loss = -mean_k min(ratio_k A_k, clipped_k A_k)``,

minimised over ``mu`` by 100 Adam steps at learning rate 0.01, warmed up linearly over 30 steps and
then decayed linearly to 0 (``eps = 0.1``). Everything here is deterministic (float64, CPU), so any
worker that replays the finished rounds reaches the same policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PPOSettings", "TruncatedNormal", "sigma_for_round", "clipped_objective", "ppo_update", "logit"]


@dataclass(frozen=True)
class PPOSettings:
    """Search settings (released RetinaNet values as defaults)."""

    rounds: int = 40
    samples_per_round: int = 8
    sigma0: float = 0.2
    clip_eps: float = 0.1
    mu_lr: float = 0.01
    update_steps: int = 100
    warmup_steps: int = 30

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.samples_per_round < 1:
            raise ValueError("rounds and samples_per_round must be >= 1")
        if not 0.0 < self.sigma0 <= 1.0:
            raise ValueError(f"sigma0 must be in (0, 1], got {self.sigma0}")
        if not 0.0 < self.clip_eps < 1.0:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.update_steps < 1 or not 0 <= self.warmup_steps < self.update_steps:
            raise ValueError("need update_steps >= 1 and 0 <= warmup_steps < update_steps")


def logit(p: Tensor) -> Tensor:
    p = p.to(torch.float64).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def sigma_for_round(settings: PPOSettings, round_index: int) -> float:
    """``sigma_0 (R - t) / R``: the std of the samples of round ``t``."""
    return settings.sigma0 * (settings.rounds - round_index) / settings.rounds


class TruncatedNormal:
    """Independent normals ``N(mean_d, std_d)`` truncated to ``[low, high]`` (float64)."""

    def __init__(self, mean: Tensor, std: Tensor, low: float = 0.0, high: float = 1.0) -> None:
        self.mean = mean.to(torch.float64)
        self.std = std.to(torch.float64).expand_as(self.mean)
        self.low, self.high = float(low), float(high)
        normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
        self._normal = normal
        self.alpha = (self.low - self.mean) / self.std
        self.beta = (self.high - self.mean) / self.std

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """Inverse-CDF sampling, ``(count, D)``."""
        u = torch.rand(count, self.mean.numel(), generator=generator, dtype=torch.float64)
        cdf_a, cdf_b = self._normal.cdf(self.alpha), self._normal.cdf(self.beta)
        p = cdf_a + (cdf_b - cdf_a) * u
        eps = torch.finfo(torch.float64).eps
        z = math.sqrt(2.0) * torch.erfinv((2 * p - 1).clamp(-1 + eps, 1 - eps))
        return (self.mean + z * self.std).clamp(self.low, self.high)

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-dimension log-density (``-inf`` outside ``[low, high]``)."""
        z = (x - self.mean) / self.std
        log_mass = torch.log(self._normal.cdf(self.beta) - self._normal.cdf(self.alpha))
        value = -torch.log(self.std) + self._normal.log_prob(z) - log_mass
        inside = (x >= self.low) & (x <= self.high)
        return torch.where(inside, value, torch.full_like(value, -math.inf))


def clipped_objective(
    mu_logit: Tensor, thetas: Tensor, advantages: Tensor, old_log_prob: Tensor, sigma: Tensor, clip_eps: float
) -> Tensor:
    """``mean_k min(ratio_k A_k, clipped_k A_k)``, the per-dimension log-ratio clipped to
    ``[log(1 - eps), log(1 + eps)]`` before summing (as released)."""
    change = TruncatedNormal(torch.sigmoid(mu_logit), sigma).log_prob(thetas) - old_log_prob
    ratio = change.sum(dim=-1).exp()
    clipped = change.clamp(math.log(1.0 - clip_eps), math.log(1.0 + clip_eps)).sum(dim=-1).exp()
    return torch.minimum(ratio * advantages, clipped * advantages).mean()


def ppo_update(
    mu_logit: Tensor, thetas: Tensor, rewards: Tensor, settings: PPOSettings, round_index: int
) -> Tensor:
    """The mean logits after round ``round_index`` (samples ``thetas``, rewards ``rewards``)."""
    thetas = thetas.to(torch.float64)
    rewards = rewards.to(torch.float64).reshape(-1)
    advantages = rewards - rewards.mean()
    old_sigma = torch.full_like(mu_logit, sigma_for_round(settings, round_index))
    new_sigma_value = sigma_for_round(settings, round_index + 1)
    new_sigma = torch.full_like(mu_logit, new_sigma_value if new_sigma_value > 0 else float(old_sigma[0]))
    with torch.no_grad():
        old_log_prob = TruncatedNormal(torch.sigmoid(mu_logit), old_sigma).log_prob(thetas)
    mu = mu_logit.detach().clone().to(torch.float64).requires_grad_(True)
    optimizer = torch.optim.Adam([mu], lr=settings.mu_lr)

    def schedule(step: int) -> float:
        if step <= settings.warmup_steps:
            return step / settings.warmup_steps if settings.warmup_steps else 1.0
        return 1.0 - (step - settings.warmup_steps) / (settings.update_steps - settings.warmup_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for _ in range(settings.update_steps):
        loss = -clipped_objective(mu, thetas, advantages, old_log_prob, new_sigma, settings.clip_eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return mu.detach()
