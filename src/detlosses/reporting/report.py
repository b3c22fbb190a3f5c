"""The Markdown report of one training run: ``run_dir/report.md`` with its figures in ``run_dir/plots/``.

Sections: run settings (from ``metrics["run"]``), the final metrics (COCO AP family and optimal-LRP family
in percent, seconds per iteration), a per-class table (AP, AP50, oLRP and its components, the LRP-optimal
score threshold, TP/FP/FN counts), Spearman's correlation between score and IoU of the true positives,
and the figures of :mod:`detlosses.reporting.plots` linked relatively. The training curves need
``metrics.csv`` and the GHM section ``gradient_norms.json`` (GHM runs only); when one of these run-directory
files is missing or unreadable the report says so instead of failing. Every file is written atomically,
``report.md`` last.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from ..evaluation.coco import COCO_SUMMARY_KEYS
from ..evaluation.evaluate import LRP_SUMMARY_KEYS, EvaluationDetails
from .correlation import true_positives
from .formatting import (
    NA,
    escape_cell,
    format_number,
    format_percent,
    format_seconds,
    markdown_table,
)
from .plots import (
    plot_gradient_norm_histogram,
    plot_lrp_components,
    plot_precision_recall,
    plot_score_vs_iou,
    plot_training_curves,
)
from .run_dir import GRADIENT_NORMS_JSON, METRICS_CSV, PLOTS_DIR, REPORT_MD

__all__ = [
    "GRADIENT_NORMS_PNG",
    "LRP_COMPONENTS_PNG",
    "PRECISION_RECALL_PNG",
    "SCORE_VS_IOU_PNG",
    "TRAINING_CURVES_PNG",
    "write_run_report",
]

TRAINING_CURVES_PNG = "training_curves.png"
PRECISION_RECALL_PNG = "precision_recall.png"
LRP_COMPONENTS_PNG = "lrp_components.png"
SCORE_VS_IOU_PNG = "score_vs_iou.png"
GRADIENT_NORMS_PNG = "gradient_norms.png"

_RUN_KEY_ORDER = ("loss", "model", "data", "dataset", "epochs", "seed", "batch_size", "lr", "image_size")
_MAX_CELL = 120


def _run_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _run_section(metrics: Mapping[str, Any]) -> list[str]:
    run = metrics.get("run")
    if not isinstance(run, Mapping) or not run:
        return ["No run settings (`metrics[\"run\"]` is absent).", ""]
    keys = [k for k in _RUN_KEY_ORDER if k in run] + sorted(k for k in run if k not in _RUN_KEY_ORDER)
    return [markdown_table(["Setting", "Value"], [[str(k), _run_value(run[k])] for k in keys], align="ll")]


def _check_metrics(metrics: Mapping[str, Any]) -> None:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    for key in (*COCO_SUMMARY_KEYS, *LRP_SUMMARY_KEYS, "per_class"):
        if key not in metrics:
            raise KeyError(f"metrics have no key {key!r} (expected the evaluate_detections() / metrics.json dict)")
    if not isinstance(metrics["per_class"], Mapping):
        raise TypeError(f"metrics['per_class'] must be a dict, got {type(metrics['per_class']).__name__}")


def _metrics_section(metrics: Mapping[str, Any]) -> list[str]:
    header = [*COCO_SUMMARY_KEYS, *LRP_SUMMARY_KEYS, "s / iteration"]
    row = [format_percent(metrics[k]) for k in (*COCO_SUMMARY_KEYS, *LRP_SUMMARY_KEYS)]
    row.append(format_seconds(metrics.get("seconds_per_iteration")))
    counts = ", ".join(
        f"{label}: {metrics[key]}" for key, label in
        (("num_images", "images"), ("num_gt", "ground truths"), ("num_detections", "detections"))
        if key in metrics
    )
    lines = [
        "COCO AP (↑) and optimal LRP (↓, Oksuz et al.) in percent; `n/a` where undefined.",
        "",
        markdown_table(header, [row], align="r" * len(header)),
    ]
    if counts:
        lines += [f"Evaluated on {counts}.", ""]
    return lines


def _per_class_section(metrics: Mapping[str, Any]) -> list[str]:
    per_class: Mapping[str, Any] = metrics["per_class"]
    if not per_class:
        return ["No classes.", ""]
    header = ["Class", "GT", "AP", "AP50", "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN", "LRP-opt. score thr.",
              "TP / FP / FN"]
    rows = []
    for name, entry in per_class.items():
        if not isinstance(entry, Mapping):
            raise TypeError(f"metrics['per_class'][{name!r}] must be a dict, got {type(entry).__name__}")
        for key in ("AP", "AP50", *LRP_SUMMARY_KEYS):
            if key not in entry:
                raise KeyError(f"metrics['per_class'][{name!r}] has no key {key!r}")
        counts = [entry.get(k) for k in ("n_tp", "n_fp", "n_fn")]
        rows.append([
            str(name),
            str(entry.get("n_gt", NA)),
            *[format_percent(entry[k]) for k in ("AP", "AP50", *LRP_SUMMARY_KEYS)],
            format_number(entry.get("lrp_threshold")),
            " / ".join(NA if c is None else str(c) for c in counts),
        ])
    return [
        "oLRP components at each class's LRP-optimal score threshold: loc = mean (1 − IoU) of the true "
        "positives, FP = false-positive rate, FN = miss rate. A class without a true positive at the optimum "
        "has oLRP 100 and undefined loc, FP and threshold.",
        "",
        markdown_table(header, rows),
    ]


def _image(alt: str, filename: str) -> str:
    return f"![{alt}]({PLOTS_DIR}/{filename})"


def write_run_report(
    run_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    details: EvaluationDetails | None,
    *,
    title: str | None = None,
) -> Path:
    """Write ``run_dir/report.md`` and its figures in ``run_dir/plots/``.

    Args:
        run_dir: the run directory (created if needed); ``metrics.csv`` and ``gradient_norms.json`` are read
            from it when present.
        metrics: the final metrics (``evaluate_detections`` dict or the parsed ``metrics.json``, whose NaN
            values are ``None``), optionally with ``seconds_per_iteration``, ``loss`` and ``run``.
        details: the :class:`~detlosses.evaluation.EvaluationDetails` of the same evaluation, for the
            precision–recall and score-vs-IoU figures and the correlation; ``None`` leaves them out.
        title: the report's title (default: ``"Run report: <loss>"``).

    Returns:
        The path of ``report.md``.

    Raises:
        KeyError: naming a metric missing from ``metrics``.
        TypeError: when ``metrics`` or ``details`` have the wrong type.
    """
    _check_metrics(metrics)
    if details is not None and not isinstance(details, EvaluationDetails):
        raise TypeError(f"details must be EvaluationDetails or None, got {type(details).__name__}")
    run_dir = Path(run_dir)
    plots = run_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    run = metrics.get("run") if isinstance(metrics.get("run"), Mapping) else {}
    loss = metrics.get("loss") or run.get("loss") or run_dir.name

    lines: list[str] = [f"# {title or f'Run report: {loss}'}", "", f"Run directory: `{run_dir}`", ""]
    lines += ["## Run", "", *_run_section(metrics)]
    lines += ["## Metrics", "", *_metrics_section(metrics)]
    lines += ["## Per class", "", *_per_class_section(metrics)]

    lines += ["## Score vs localisation quality", ""]
    if details is not None:
        rho = plot_score_vs_iou(details.matches, plots / SCORE_VS_IOU_PNG)
        n_tp = len(true_positives(details.matches))
        tau = details.matches.iou_threshold
        rho_text = f"{rho:.3f}" if math.isfinite(rho) else f"{NA} (fewer than 3 true positives or constant input)"
        lines += [
            f"Spearman's rank correlation between detection score and IoU over the {n_tp} true positives "
            f"(IoU ≥ {tau:g}, all classes): **ρ = {rho_text}**. A low ρ means the classification score is a poor "
            "proxy of localisation quality (the motivation of the IoU-balanced losses).",
            "",
            _image("Score vs IoU of true positives", SCORE_VS_IOU_PNG),
            "",
        ]
    else:
        lines += [f"Spearman's ρ: {NA} (no evaluation details were given).", ""]

    lines += ["## Figures", "", "### Training curves", ""]
    metrics_csv = run_dir / METRICS_CSV
    if not metrics_csv.is_file():
        lines += [f"No training curves: `{METRICS_CSV}` not found in the run directory.", ""]
    else:
        try:
            plot_training_curves(metrics_csv, plots / TRAINING_CURVES_PNG)
        except (KeyError, ValueError) as error:
            lines += [f"No training curves: `{METRICS_CSV}` could not be plotted: {escape_cell(error)}", ""]
        else:
            lines += [_image("Training curves", TRAINING_CURVES_PNG), ""]

    if details is not None:
        plot_precision_recall(details.coco, plots / PRECISION_RECALL_PNG)
        lines += ["### Precision–recall (IoU 0.5)", "", _image("Precision-recall curves", PRECISION_RECALL_PNG), ""]
    plot_lrp_components(details.lrp if details is not None else metrics, plots / LRP_COMPONENTS_PNG)
    lines += ["### Optimal LRP components", "", _image("oLRP components per class", LRP_COMPONENTS_PNG), ""]

    gradient_norms = run_dir / GRADIENT_NORMS_JSON
    if gradient_norms.is_file():
        lines += ["### GHM-C gradient-norm distribution", ""]
        try:
            plot_gradient_norm_histogram(gradient_norms, plots / GRADIENT_NORMS_PNG)
        except (KeyError, ValueError) as error:
            lines += [f"`{GRADIENT_NORMS_JSON}` could not be plotted: {escape_cell(error)}", ""]
        else:
            lines += [
                "Histogram of g = |sigmoid(x) − t| over all (anchor, class) elements, first / middle / last "
                "epoch: GHM-C down-weights the crowded bins (easy negatives near 0, outliers near 1).",
                "",
                _image("GHM-C gradient-norm histogram", GRADIENT_NORMS_PNG),
                "",
            ]
    return atomic_write_text(run_dir / REPORT_MD, "\n".join(lines).rstrip("\n") + "\n")

