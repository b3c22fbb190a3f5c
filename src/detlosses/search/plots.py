"""Plots of a search: reward per round and the learned functions against the identity.

Figures are :class:`matplotlib.figure.Figure` objects rendered by :func:`~detlosses.reporting.plots.save_figure`
(Agg, atomically): no pyplot, no global backend switch, as in :mod:`detlosses.reporting`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..losses.pap_params import FUNCTION_ORDER, PAPParams
from ..reporting.plots import save_figure

__all__ = ["plot_rewards", "plot_learned_functions"]


def plot_rewards(rounds: list[dict[str, Any]], out_png: str | os.PathLike) -> Path:
    """Mean and best reward (AP) of every round, with each sample as a dot."""
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    xs = [r["round"] + 1 for r in rounds]
    for r in rounds:
        ax.scatter([r["round"] + 1] * len(r["rewards"]), [100 * v for v in r["rewards"]], s=10, color="0.7")
    ax.plot(xs, [100 * r["mean_reward"] for r in rounds], marker="o", label="mean of the round")
    ax.plot(xs, [100 * r["best_reward"] for r in rounds], marker="^", label="best of the round")
    ax.set_xlabel("round")
    ax.set_ylabel("reward: AP on search-val (%)")
    ax.set_title("Parameterized AP Loss search")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_png)


def plot_learned_functions(params: PAPParams, out_png: str | os.PathLike) -> Path:
    """H1, H2, I1, I2, I3 (piecewise-linear through their control points) against the identity."""
    fig = Figure(figsize=(11.0, 2.6), dpi=110)
    names = [n for n in FUNCTION_ORDER if params.function(n) is not None]
    for index, name in enumerate(sorted(names)):
        ax = fig.add_subplot(1, len(names), index + 1)
        xs, ys = params.function(name)
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="identity")
        ax.plot(xs, ys, marker="o", label="searched")
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        if index == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"learned functions (reg_weight {params.reg_weight:.2f})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_png)
