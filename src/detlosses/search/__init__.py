"""The Parameterized AP Loss search (the ``[search]`` extra: Optuna, Lightning).

:mod:`.ppo` (the policy and its PPO-clip update), :mod:`.sampler` (an Optuna sampler that runs it
round by round on shared storage), :mod:`.space` (search variables to loss parameters),
:mod:`.proxy` (the short training that scores a sample), :mod:`.runner` (``detlosses search``).
"""

from .ppo import PPOSettings, TruncatedNormal, ppo_update, sigma_for_round
from .runner import SAMPLERS, SearchConfig, SearchResult, open_study, run_search, write_results
from .sampler import PPOSampler, closed_rounds
from .space import SearchSpace

__all__ = [
    "PPOSampler",
    "PPOSettings",
    "SAMPLERS",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "TruncatedNormal",
    "closed_rounds",
    "open_study",
    "ppo_update",
    "run_search",
    "sigma_for_round",
    "write_results",
]
