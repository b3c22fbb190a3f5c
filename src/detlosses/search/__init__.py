"""The Parameterized AP Loss search (the ``[search]`` extra: Optuna, Lightning).

:mod:`.ppo` (the policy and its PPO-clip update), :mod:`.sampler` (an Optuna sampler that runs it
round by round on shared storage), :mod:`.space` (search variables to loss parameters),
:mod:`.proxy` (the short training that scores a sample), :mod:`.study` (storage and sampler of the
Optuna study), :mod:`.runner` (``detlosses search``: settings, workers), :mod:`.results` (what a
finished search writes).
"""

from .ppo import PPOSettings, TruncatedNormal, ppo_update, sigma_for_round
from .results import write_results
from .runner import SearchConfig, SearchResult, run_search
from .sampler import PPOSampler, closed_rounds
from .space import SearchSpace
from .study import SAMPLERS, open_study

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
