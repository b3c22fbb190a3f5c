"""What a finished search writes: ``best_params.json``, ``best_sample_params.json``,
``rounds.json``, plots and ``search.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import TrialState

from ..losses.pap_params import PAPParams, save_pap_params, save_two_stage_pap_params
from .ppo import sigma_for_round
from .sampler import PPOSampler, closed_rounds
from .study import open_study

if TYPE_CHECKING:
    from .runner import SearchConfig, SearchResult  # noqa: F401

__all__ = ["write_results"]


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
    metadata = {"source": f"detlosses search ({config.sampler}, {source})", "rounds": config.rounds,
                "samples_per_round": config.samples_per_round, "budget": config.budget, "data": config.base.data}
    best = max(complete, key=lambda t: t.value)
    best_metadata = {"source": f"best sample, trial #{best.number}", "reward": best.value}
    space = config.space
    if space.stages:  # Faster R-CNN: one set per stage, in a two-stage params file
        stage_params = space.to_stage_params(theta, metadata)
        params = stage_params[space.stages[-1]]  # the R-CNN head's set: plotted and quoted in search.md
        best_params = save_two_stage_pap_params(stage_params, out / "best_params.json")
        save_two_stage_pap_params(space.to_stage_params(space.vector(best.params), best_metadata),
                                  out / "best_sample_params.json")
    else:
        stage_params = None
        params = space.to_params(theta, metadata)
        best_params = save_pap_params(params, out / "best_params.json")
        save_pap_params(space.to_params(space.vector(best.params), best_metadata), out / "best_sample_params.json")
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
    _write_markdown(out / "search.md", config, summary, params, plots, stage_params)
    from .runner import SearchResult

    return SearchResult(out, best_params, summary)


def _write_markdown(path: Path, config: SearchConfig, summary: dict, params: PAPParams, plots: dict,
                    stage_params: dict[str, PAPParams] | None = None) -> None:
    if stage_params:
        weights = ", ".join(f"{stage} reg_weight {p.reg_weight:.3f}" for stage, p in stage_params.items())
    else:
        weights = f"reg_weight {params.reg_weight:.3f}"
    lines = [
        "# Parameterized AP Loss search", "",
        f"Sampler `{config.sampler}`, {summary['trials']} finished trials "
        f"({config.rounds} rounds x {config.samples_per_round} samples planned), proxy budget "
        f"{config.budget} iterations on `{config.base.data}` ({config.base.model}, {config.base.backbone}).",
        f"Aborted trials (NaN or loss stuck at 1.0, reward 0): {summary['aborted']}.", "",
        f"Parameters written to `best_params.json`: {summary['source']}, {weights}. "
        f"Best sample: trial #{summary['best_trial']} with AP {100 * summary['best_reward']:.1f}.", "",
        "| round | mean AP | best AP |", "| ---: | ---: | ---: |",
    ]
    lines += [f"| {r['round'] + 1} | {100 * r['mean_reward']:.1f} | {100 * r['best_reward']:.1f} |"
              for r in summary["rounds"]]
    for title, png in plots.items():
        lines += ["", f"![{title}](plots/{Path(png).name})"]
    path.write_text("\n".join(lines) + "\n")

