"""Report figures: each function draws one figure and writes it as a PNG (atomically), returning the path.

Figures are built with :class:`matplotlib.figure.Figure` directly and rendered by the Agg backend, so
nothing touches pyplot's global state (no open-figure leaks, no backend switch for the caller).

* :func:`plot_training_curves`: ``train/loss*`` components vs step, validation metrics vs epoch;
* :func:`plot_precision_recall`: precision–recall at IoU 0.5 per class;
* :func:`plot_lrp_components`: oLRP and its components (loc, FP, FN) per class and their mean;
* :func:`plot_score_vs_iou`: score vs IoU of the true positives, with Spearman's rho;
* :func:`plot_gradient_norm_histogram`: GHM-C gradient-norm histograms (first, middle, last epoch);
* :func:`plot_comparison`: AP, AP50, AP75 and oLRP per loss, mean ± std over seeds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._atomic import atomic_write
from ..evaluation.evaluate import EvaluationDetails
from ..evaluation.lrp import LRPResult
from ..evaluation.matching import MatchResult
from .correlation import MIN_TRUE_POSITIVES, TruePositives, score_iou_spearman, true_positives
from .formatting import as_float
from .run_dir import GradientNormHistograms, read_gradient_norms
from .training_log import TrainingLog, read_training_log

__all__ = [
    "COMPARISON_PLOT_METRICS",
    "DEFAULT_DPI",
    "save_figure",
    "moving_average",
    "plot_comparison",
    "plot_gradient_norm_histogram",
    "plot_lrp_components",
    "plot_precision_recall",
    "plot_score_vs_iou",
    "plot_training_curves",
]

DEFAULT_DPI = 110
"""Resolution of every report PNG."""


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = DEFAULT_DPI) -> Path:
    """Render ``figure`` to a PNG at ``path`` atomically (Agg renderer, no pyplot state); returns the path."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))


PathLike = str | os.PathLike[str]

COMPARISON_PLOT_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "oLRP")
"""Metrics drawn by :func:`plot_comparison` (AP: higher is better; oLRP: lower is better)."""

_LEGEND_INSIDE_MAX = 12  # more entries than this go to a legend outside the axes
_MAX_FIGURE_WIDTH = 30.0  # inches


def _colors(n: int) -> list[Any]:
    """``n`` distinguishable colours (tab10 / tab20, then an even sampling of a continuous map)."""
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.05, 0.95, n)]


def _legend(ax: Axes, n_entries: int, **kwargs: Any) -> None:
    if n_entries == 0:
        return
    if n_entries <= _LEGEND_INSIDE_MAX:
        ax.legend(fontsize=8, **kwargs)
    else:
        ax.legend(
            fontsize=6,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            ncol=max(1, math.ceil(n_entries / 30)),
            borderaxespad=0.0,
        )


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}" if math.isfinite(value) else "n/a"


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``values`` (same length; shorter windows at both ends)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if window <= 1 or n == 0:
        return values.copy()
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    index = np.arange(n)
    lo = np.maximum(0, index - window // 2)
    hi = np.minimum(n, index + window - window // 2)
    return (cumulative[hi] - cumulative[lo]) / (hi - lo)


def _smoothing_window(n: int) -> int:
    return int(min(50, max(1, round(n / 25))))


def _plot_loss_panel(ax: Axes, log: TrainingLog, key: str, color: Any) -> None:
    steps, y = log.series(key, "step")
    order = np.argsort(steps, kind="stable")
    steps, y = steps[order], y[order]
    finite = np.isfinite(y)
    dropped = int((~finite).sum())
    steps, y = steps[finite], y[finite]
    window = _smoothing_window(y.shape[0])
    if window > 1:
        ax.plot(steps, y, color=color, alpha=0.25, linewidth=0.8, label="raw")
        ax.plot(steps, moving_average(y, window), color=color, linewidth=1.6, label=f"moving avg ({window})")
        ax.legend(fontsize=7)
    else:
        ax.plot(steps, y, color=color, linewidth=1.4, marker="." if y.shape[0] < 30 else None)
    title = key
    if dropped:
        title += f" ({dropped} non-finite dropped)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)


def _plot_epoch_panel(ax: Axes, log: TrainingLog, keys: Sequence[str], title: str, ylabel: str) -> None:
    use_epoch = "epoch" in log.values
    for key, color in zip(keys, _colors(len(keys)), strict=True):
        x, y = log.per_epoch(key) if use_epoch else log.series(key, "step")
        finite = np.isfinite(y)
        ax.plot(x[finite], y[finite], marker="o", markersize=3, color=color, label=key)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch" if use_epoch else "step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend(ax, len(keys))


def plot_training_curves(metrics_csv: PathLike | TrainingLog, out_png: PathLike) -> Path:
    """Training curves from Lightning's ``metrics.csv``.

    One panel per ``train/loss*`` column vs ``step`` (raw values faint, a centred moving average on top;
    non-finite values are dropped and counted in the panel title), one panel with the ``val/AP*`` and
    ``val/oLRP*`` metrics vs ``epoch`` (last value of each epoch), one per other ``val/*`` column, and one
    with the ``lr-*`` learning rates vs step.

    Args:
        metrics_csv: path of ``metrics.csv`` (or an already parsed :class:`TrainingLog`).
        out_png: the PNG to write.

    Raises:
        FileNotFoundError: when ``metrics_csv`` does not exist.
        ValueError: when it holds nothing to plot, or is malformed (see :func:`read_training_log`).
    """
    log = metrics_csv if isinstance(metrics_csv, TrainingLog) else read_training_log(metrics_csv)
    losses = log.loss_columns
    val = log.val_columns
    val_main = [k for k in val if k.startswith(("val/AP", "val/oLRP"))]
    val_other = [k for k in val if k not in val_main]
    lrs = log.lr_columns
    n_panels = len(losses) + (1 if val_main else 0) + len(val_other) + (1 if lrs else 0)
    if n_panels == 0:
        raise ValueError(f"{log.path}: nothing to plot (no values in train/loss*, val/* or lr-* columns)")

    ncols = 1 if n_panels == 1 else (2 if n_panels <= 6 else 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    colors = _colors(max(1, len(losses)))
    panel = 0
    for key, color in zip(losses, colors, strict=False):
        _plot_loss_panel(axes[panel], log, key, color)
        panel += 1
    if val_main:
        _plot_epoch_panel(axes[panel], log, val_main, "validation AP (↑) / oLRP (↓)", "value")
        panel += 1
    for key in val_other:
        _plot_epoch_panel(axes[panel], log, [key], key, "value")
        panel += 1
    if lrs:
        ax = axes[panel]
        for key, color in zip(lrs, _colors(len(lrs)), strict=True):
            steps, y = log.series(key, "step")
            ax.plot(steps, y, color=color, label=key)
        ax.set_title("learning rate", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("lr")
        ax.grid(alpha=0.3)
        _legend(ax, len(lrs))
        panel += 1
    for ax in axes[panel:]:
        ax.set_visible(False)
    fig.suptitle(f"Training curves ({log.path.parent.name or log.path.name})", fontsize=12)
    return save_figure(fig, out_png)


def _coco_dict(coco_details: Mapping[str, Any] | EvaluationDetails) -> Mapping[str, Any]:
    coco = coco_details.coco if isinstance(coco_details, EvaluationDetails) else coco_details
    if not isinstance(coco, Mapping):
        raise TypeError(f"expected the coco_ap() dict or EvaluationDetails, got {type(coco_details).__name__}")
    for key in ("precision_iou50", "recall_thresholds", "category_names"):
        if key not in coco:
            raise KeyError(f"COCO details have no key {key!r} (expected the dict returned by coco_ap())")
    return coco


def plot_precision_recall(coco_details: Mapping[str, Any] | EvaluationDetails, out_png: PathLike) -> Path:
    """Interpolated precision–recall curves at IoU 0.5, one line per class (legend: the class AP50) plus
    the mean over classes; classes without ground truth (NaN curves) are left out and counted.

    Args:
        coco_details: ``details.coco`` of :func:`~detlosses.evaluation.evaluate_detections` (or the details).
        out_png: the PNG to write.

    Raises:
        KeyError: naming the missing key of ``coco_details``.
        ValueError: when the arrays' shapes disagree.
    """
    coco = _coco_dict(coco_details)
    precision = np.array(coco["precision_iou50"], dtype=np.float64)
    recall = np.array(coco["recall_thresholds"], dtype=np.float64)
    names = [str(n) for n in coco["category_names"]]
    if precision.ndim != 2 or precision.shape != (len(names), recall.shape[0]):
        raise ValueError(
            f"precision_iou50 has shape {precision.shape}, expected ({len(names)} classes, {recall.shape[0]} recall "
            "points)"
        )
    defined = ~np.isnan(precision).any(axis=1)
    fig = Figure(figsize=(7.5 if defined.sum() > _LEGEND_INSIDE_MAX else 6.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    shown = [k for k in range(len(names)) if defined[k]]
    for k, color in zip(shown, _colors(len(shown)), strict=True):
        label = f"{names[k]} (AP50 {_pct(precision[k].mean())})"
        ax.plot(recall, precision[k], color=color, linewidth=1.2, label=label)
    if shown:
        mean_curve = precision[shown].mean(axis=0)
        ax.plot(recall, mean_curve, color="black", linewidth=2.2, linestyle="--",
                label=f"mean (AP50 {_pct(mean_curve.mean())})")
    else:
        ax.text(0.5, 0.5, "no class with ground truth", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    title = "Precision–recall at IoU 0.5"
    missing = len(names) - len(shown)
    if missing:
        title += f" ({missing} class{'es' if missing > 1 else ''} without ground truth not shown)"
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    _legend(ax, len(shown) + (1 if shown else 0), loc="lower left")
    return save_figure(fig, out_png)


_LRP_FIELDS: tuple[tuple[str, str], ...] = (
    ("oLRP", "oLRP"),
    ("oLRP_loc", "loc"),
    ("oLRP_FP", "FP"),
    ("oLRP_FN", "FN"),
)


def _lrp_rows(source: LRPResult | EvaluationDetails | Mapping[str, Any]) -> list[tuple[str, list[float]]]:
    """``(name, [oLRP, loc, FP, FN])`` for each class with ground truth, then ``("mean", ...)``."""
    if isinstance(source, EvaluationDetails):
        source = source.lrp
    if isinstance(source, LRPResult):
        rows = [
            (c.name, [c.olrp, c.loc, c.fp, c.fn]) for c in source.per_class.values() if c.n_gt > 0
        ]
        rows.append(("mean", [source.molrp, source.molrp_loc, source.molrp_fp, source.molrp_fn]))
        return rows
    if not isinstance(source, Mapping):
        raise TypeError(f"expected an LRPResult, EvaluationDetails or metrics dict, got {type(source).__name__}")
    if "per_class" not in source:
        raise KeyError("metrics have no key 'per_class'")
    rows = []
    for name, entry in source["per_class"].items():
        for key, _ in _LRP_FIELDS:
            if key not in entry:
                raise KeyError(f"metrics['per_class'][{name!r}] has no key {key!r}")
        values = [as_float(entry[key]) for key, _ in _LRP_FIELDS]
        n_gt = entry.get("n_gt")
        if (n_gt is not None and int(n_gt) == 0) or (n_gt is None and math.isnan(values[0])):
            continue
        rows.append((str(name), values))
    for key, _ in _LRP_FIELDS:
        if key not in source:
            raise KeyError(f"metrics have no key {key!r}")
    rows.append(("mean", [as_float(source[key]) for key, _ in _LRP_FIELDS]))
    return rows


def plot_lrp_components(lrp_result_or_metrics: LRPResult | EvaluationDetails | Mapping[str, Any],
                        out_png: PathLike) -> Path:
    """Grouped bars of oLRP and its components (loc = mean 1 − IoU of TPs, FP rate, FN rate) per class with
    ground truth, plus the class means (moLRP), in percent; lower is better. Undefined components (no true
    positive at the optimum) are marked ``n/a``.

    Args:
        lrp_result_or_metrics: ``details.lrp`` (:class:`~detlosses.evaluation.LRPResult`), the details, or the
            metrics dict of :func:`~detlosses.evaluation.evaluate_detections` (``per_class`` + means).
        out_png: the PNG to write.

    Raises:
        KeyError: naming a missing key of the metrics dict.
    """
    rows = _lrp_rows(lrp_result_or_metrics)
    n_groups = len(rows)
    width = min(_MAX_FIGURE_WIDTH, max(6.4, 1.0 + 0.75 * n_groups))
    fig = Figure(figsize=(width, 4.6), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n_groups, dtype=np.float64)
    x[-1] += 0.5  # set the mean apart
    bar_width = 0.8 / len(_LRP_FIELDS)
    for j, ((_, label), color) in enumerate(zip(_LRP_FIELDS, _colors(len(_LRP_FIELDS)), strict=True)):
        values = np.array([100.0 * row[1][j] for row in rows])
        offset = (j - (len(_LRP_FIELDS) - 1) / 2) * bar_width
        finite = np.isfinite(values)
        ax.bar(x[finite] + offset, values[finite], width=bar_width, color=color, label=label)
        for xi in x[~finite]:
            ax.text(xi + offset, 1.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color=color)
    ax.axvline(x[-1] - 0.75, color="grey", linestyle=":", linewidth=1.0)
    ax.set_xticks(x)
    ax.set_xticklabels([name for name, _ in rows], rotation=45 if n_groups > 6 else 0,
                       ha="right" if n_groups > 6 else "center", fontsize=8)
    ax.set_ylim(0.0, 105.0)
    ax.set_ylabel("%  (lower is better)")
    mean = rows[-1][1][0]
    ax.set_title(f"Optimal LRP and its components per class (moLRP {_pct(mean)})", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(_LRP_FIELDS), loc="upper left")
    return save_figure(fig, out_png)


def plot_score_vs_iou(matches: MatchResult | EvaluationDetails, out_png: PathLike) -> float:
    """Scatter of detection score vs IoU of every true positive (all classes, coloured by class) and
    Spearman's rank correlation between the two, shown in the title.

    Args:
        matches: ``details.matches`` (:class:`~detlosses.evaluation.MatchResult`) or the details.
        out_png: the PNG to write.

    Returns:
        Spearman's rho (NaN with fewer than 3 true positives or constant scores / IoUs); see
        :func:`~detlosses.reporting.correlation.score_iou_spearman`.
    """
    result = matches.matches if isinstance(matches, EvaluationDetails) else matches
    tps: TruePositives = true_positives(result)
    rho = score_iou_spearman(tps)
    fig = Figure(figsize=(6.8, 5.0), layout="constrained")
    ax = fig.add_subplot()
    present = [c for c in result.category_names if np.any(tps.category_ids == c)]
    for category_id, color in zip(present, _colors(len(present)), strict=True):
        mask = tps.category_ids == category_id
        ax.scatter(tps.ious[mask], tps.scores[mask], s=14, alpha=0.65, color=color, edgecolors="none",
                   label=f"{tps.category_names[category_id]} ({int(mask.sum())})")
    if len(tps) == 0:
        ax.text(0.5, 0.5, "no true positives", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(max(0.0, result.iou_threshold - 0.02), 1.0)
    ax.set_xlabel(f"IoU with the matched ground truth (TP: IoU ≥ {result.iou_threshold:g})")
    ax.set_ylabel("detection score")
    if math.isnan(rho):
        why = f"< {MIN_TRUE_POSITIVES} TPs" if len(tps) < MIN_TRUE_POSITIVES else "constant input"
        rho_text = f"n/a ({why})"
    else:
        rho_text = f"{rho:.3f}"
    ax.set_title(f"Score vs IoU of true positives: Spearman ρ = {rho_text}, n = {len(tps)}", fontsize=11)
    ax.grid(alpha=0.3)
    _legend(ax, len(present), loc="lower right")
    save_figure(fig, out_png)
    return rho


def plot_gradient_norm_histogram(gradient_norms_json: PathLike | Mapping[str, Any] | GradientNormHistograms,
                                 out_png: PathLike) -> Path:
    """GHM-C gradient-norm histograms of the first, middle and last epochs, overlaid, log y.

    Args:
        gradient_norms_json: path of ``gradient_norms.json``, its parsed dict, or
            :class:`~detlosses.reporting.run_dir.GradientNormHistograms`.
        out_png: the PNG to write.

    Raises:
        FileNotFoundError, KeyError, ValueError: see :func:`~detlosses.reporting.run_dir.read_gradient_norms`.
    """
    hist = (
        gradient_norms_json
        if isinstance(gradient_norms_json, GradientNormHistograms)
        else read_gradient_norms(gradient_norms_json)
    )
    n_epochs = hist.epochs.shape[0]
    picks = list(dict.fromkeys([0, (n_epochs - 1) // 2, n_epochs - 1]))
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    any_positive = False
    for i, color in zip(picks, _colors(len(picks)), strict=True):
        counts = hist.counts[i]
        any_positive |= bool((counts > 0).any())
        masked = np.where(counts > 0, counts, np.nan)  # log scale: empty bins are gaps
        ax.step(hist.edges, np.append(masked, masked[-1]), where="post", color=color, linewidth=1.6,
                label=f"epoch {int(hist.epochs[i])} ({int(counts.sum()):,} elements)")
    if any_positive:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "all bins empty", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(hist.edges[0], hist.edges[-1])
    ax.set_xlabel("gradient norm g = |sigmoid(x) − t|")
    ax.set_ylabel("elements per bin (log)")
    ax.set_title(f"GHM-C gradient-norm histogram ({hist.edges.shape[0] - 1} bins, {n_epochs} epochs logged)",
                 fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_comparison(summary: Mapping[str, Any], out_png: PathLike) -> Path:
    """Grouped bars of AP, AP50, AP75 and oLRP (percent), one bar per loss in each group, with the std
    over seeds as error bars; undefined means are marked ``n/a``.

    Args:
        summary: the result of :func:`~detlosses.reporting.comparison.summarize_runs`.
        out_png: the PNG to write.

    Raises:
        KeyError: naming a missing key of ``summary``.
        ValueError: when ``summary`` has no loss.
    """
    if "losses" not in summary:
        raise KeyError("summary has no key 'losses' (expected the dict returned by summarize_runs())")
    losses: Mapping[str, Any] = summary["losses"]
    if not losses:
        raise ValueError("summary has no losses to plot")
    names = list(losses)
    n = len(names)
    width = min(_MAX_FIGURE_WIDTH, max(7.0, 1.2 * len(COMPARISON_PLOT_METRICS) * max(1.0, n / 3)))
    fig = Figure(figsize=(width, 4.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(COMPARISON_PLOT_METRICS), dtype=np.float64)
    bar_width = 0.8 / n
    for i, (name, color) in enumerate(zip(names, _colors(n), strict=True)):
        entry = losses[name]
        means, stds = [], []
        for metric in COMPARISON_PLOT_METRICS:
            if metric not in entry:
                raise KeyError(f"summary['losses'][{name!r}] has no key {metric!r}")
            stat = entry[metric]
            for key in ("mean", "std"):
                if key not in stat:
                    raise KeyError(f"summary['losses'][{name!r}][{metric!r}] has no key {key!r}")
            means.append(100.0 * as_float(stat["mean"]))
            std = as_float(stat["std"])
            stds.append(100.0 * std if math.isfinite(std) else 0.0)
        means_arr, stds_arr = np.array(means), np.array(stds)
        offset = (i - (n - 1) / 2) * bar_width
        finite = np.isfinite(means_arr)
        n_runs = entry.get("n_runs")
        label = f"{name} (n={n_runs})" if n_runs is not None else name
        ax.bar(x[finite] + offset, means_arr[finite], width=bar_width, yerr=stds_arr[finite], capsize=3,
               color=color, label=label, error_kw={"elinewidth": 1.0})
        if n <= 6:  # value labels above the error bars while they fit
            for xi, m, s in zip(x[finite], means_arr[finite], stds_arr[finite], strict=True):
                ax.text(xi + offset, m + s + 0.8, f"{m:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
        for xi in x[~finite]:
            ax.text(xi + offset, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{m} ({'↓' if m.startswith('oLRP') else '↑'})" for m in COMPARISON_PLOT_METRICS])
    ax.set_ylabel("%")
    top = ax.get_ylim()[1]
    ax.set_ylim(0.0, max(10.0, min(110.0, top * 1.12)))
    ax.set_title("Loss comparison: mean ± std over seeds", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, n, loc="upper left")
    return save_figure(fig, out_png)
