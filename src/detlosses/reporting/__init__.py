"""Reporting: figures, per-run Markdown reports and the multi-seed loss comparison.

Modules, one concept each:

* :mod:`~detlosses.reporting.run_dir`: the run directory contract (file names, ``metrics.json`` and
  ``gradient_norms.json`` readers, :func:`load_run`);
* :mod:`~detlosses.reporting.training_log`: Lightning's sparse ``metrics.csv``;
* :mod:`~detlosses.reporting.correlation`: Spearman's correlation of score and IoU of true positives;
* :mod:`~detlosses.reporting.plots`: the figures (Agg, written as PNG);
* :mod:`~detlosses.reporting.report`: ``run_dir/report.md`` + ``run_dir/plots/*.png``;
* :mod:`~detlosses.reporting.comparison`: mean ± std per loss over seeds, ``comparison.md/.png/.json``;
* :mod:`~detlosses.reporting.formatting`: number / Markdown formatting (files are written atomically by
  :mod:`detlosses._atomic`, the package's one atomic-write module).
"""

from .._atomic import atomic_write, atomic_write_text
from .comparison import (
    COMPARISON_JSON,
    COMPARISON_MD,
    COMPARISON_PNG,
    REFERENCE_LOSS,
    SUMMARY_METRICS,
    summarize_runs,
    write_comparison,
)
from .correlation import TruePositives, score_iou_spearman, true_positives
from .plots import (
    plot_comparison,
    plot_gradient_norm_histogram,
    plot_lrp_components,
    plot_precision_recall,
    plot_score_vs_iou,
    plot_training_curves,
    save_figure,
)
from .report import write_run_report
from .run_dir import (
    GRADIENT_NORMS_JSON,
    METRICS_CSV,
    METRICS_JSON,
    PLOTS_DIR,
    REPORT_MD,
    GradientNormHistograms,
    load_run,
    read_gradient_norms,
    read_metrics_json,
)
from .training_log import TrainingLog, read_training_log

__all__ = [
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "COMPARISON_PNG",
    "GRADIENT_NORMS_JSON",
    "METRICS_CSV",
    "METRICS_JSON",
    "PLOTS_DIR",
    "REFERENCE_LOSS",
    "REPORT_MD",
    "SUMMARY_METRICS",
    "GradientNormHistograms",
    "TrainingLog",
    "TruePositives",
    "atomic_write",
    "atomic_write_text",
    "load_run",
    "plot_comparison",
    "plot_gradient_norm_histogram",
    "plot_lrp_components",
    "plot_precision_recall",
    "plot_score_vs_iou",
    "plot_training_curves",
    "read_gradient_norms",
    "read_metrics_json",
    "read_training_log",
    "save_figure",
    "score_iou_spearman",
    "summarize_runs",
    "true_positives",
    "write_comparison",
    "write_run_report",
]
