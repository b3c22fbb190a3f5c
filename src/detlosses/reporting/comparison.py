"""Comparison of losses over seeds: mean ± std of the final metrics and the relative time per iteration.

:func:`summarize_runs` aggregates, per loss, the sample mean and standard deviation (``ddof = 1``; 0 for a
single seed) of :data:`SUMMARY_METRICS` over the seeds whose value is defined (NaN / ``null`` values, e.g.
``APs`` on a data set without small objects, are left out; no defined value gives NaN, shown ``n/a``),
and the time per iteration relative to the :data:`REFERENCE_LOSS` (focal loss):

    relative_time(loss) = mean_seeds(seconds_per_iteration[loss]) / mean_seeds(seconds_per_iteration[focal]),

or ``"n/a"`` when focal is not among the runs (or either mean is undefined).

:func:`write_comparison` writes ``comparison.md``, ``comparison.png`` and ``comparison.json``, with the data and
settings the runs were trained with when they are given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..evaluation.evaluate import to_jsonable
from .formatting import (
    NA,
    as_float,
    format_mean_std,
    format_percent,
    format_seconds,
    markdown_table,
)
from .plots import plot_comparison
from .run_dir import REPORT_MD

__all__ = [
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "COMPARISON_PNG",
    "PERCENT_METRICS",
    "REFERENCE_LOSS",
    "SUMMARY_METRICS",
    "TIMING_CONDITIONS",
    "summarize_runs",
    "timing_conditions",
    "write_comparison",
]

REFERENCE_LOSS = "focal"
"""The baseline loss that times are expressed relative to."""

PERCENT_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "oLRP", "oLRP_loc", "oLRP_FP",
                                    "oLRP_FN")
"""Fractions shown in percent (AP-type: higher is better; oLRP-type: lower is better)."""

SUMMARY_METRICS: tuple[str, ...] = (*PERCENT_METRICS, "seconds_per_iteration")
"""Keys of ``metrics.json`` aggregated per loss."""

COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
COMPARISON_JSON = "comparison.json"


def _run_label(index: int, run: Mapping[str, Any]) -> str:
    parts = [f"runs[{index}]"]
    if "loss" in run:
        parts.append(f"loss={run['loss']!r}")
    if "seed" in run:
        parts.append(f"seed={run['seed']!r}")
    if run.get("run_dir") is not None:
        parts.append(f"run_dir={os.fspath(run['run_dir'])!r}")
    return " ".join(parts)


def _validate_run(index: int, run: Any) -> tuple[str, int, Mapping[str, Any], Path | None]:
    if not isinstance(run, Mapping):
        raise TypeError(f"runs[{index}] must be a dict, got {type(run).__name__}")
    label = _run_label(index, run)
    for key in ("loss", "seed", "metrics"):
        if key not in run:
            raise KeyError(f"{label}: missing key {key!r}")
    loss, seed, metrics = run["loss"], run["seed"], run["metrics"]
    if not isinstance(loss, str) or not loss:
        raise ValueError(f"{label}: 'loss' must be a non-empty string, got {loss!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{label}: 'seed' must be an integer, got {seed!r}")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{label}: 'metrics' must be a dict, got {type(metrics).__name__}")
    for key in SUMMARY_METRICS:
        if key not in metrics:
            raise KeyError(f"{label}: metrics have no key {key!r}")
        try:
            as_float(metrics[key])
        except TypeError as error:
            raise TypeError(f"{label}: metrics[{key!r}]: {error}") from None
    run_dir = run.get("run_dir")
    return loss, int(seed), metrics, (Path(run_dir) if run_dir is not None else None)


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    defined = [v for v in values if math.isfinite(v)]
    if not defined:
        mean, std = math.nan, math.nan
    else:
        mean = float(np.mean(defined))
        std = float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(defined), "values": list(values)}


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate runs per loss: mean ± sample std over seeds and the time relative to the focal loss.

    Args:
        runs: one ``{"loss": str, "seed": int, "metrics": <metrics.json dict>, "run_dir": path or None}`` per
            training run (see :func:`~detlosses.reporting.run_dir.load_run`).

    Returns:
        ``{"metrics": [...], "reference_loss": "focal", "losses": {loss: entry}}``, losses ordered with focal
        first, then in order of first appearance; each entry holds ``n_runs``, ``seeds``, ``run_dirs`` (runs
        sorted by seed), one ``{"mean", "std", "n", "values"}`` dict per metric of :data:`SUMMARY_METRICS`
        (``n`` = seeds with a defined value; NaN mean/std when none) and ``relative_time`` (float or ``"n/a"``).

    Raises:
        ValueError: when ``runs`` is empty, a run is malformed, or a (loss, seed) pair repeats.
        KeyError: naming the run and the missing key.
    """
    if not runs:
        raise ValueError("no runs to summarize")
    grouped: dict[str, list[tuple[int, Mapping[str, Any], Path | None]]] = {}
    for index, run in enumerate(runs):
        loss, seed, metrics, run_dir = _validate_run(index, run)
        group = grouped.setdefault(loss, [])
        if any(s == seed for s, _, _ in group):
            raise ValueError(f"{_run_label(index, run)}: loss {loss!r} with seed {seed} appears twice")
        group.append((seed, metrics, run_dir))
    order = sorted(grouped, key=lambda name: (name != REFERENCE_LOSS, list(grouped).index(name)))

    losses: dict[str, dict[str, Any]] = {}
    for loss in order:
        group = sorted(grouped[loss], key=lambda item: item[0])
        entry: dict[str, Any] = {
            "n_runs": len(group),
            "seeds": [seed for seed, _, _ in group],
            "run_dirs": [str(run_dir) if run_dir is not None else None for _, _, run_dir in group],
        }
        for key in SUMMARY_METRICS:
            entry[key] = _mean_std([as_float(metrics[key]) for _, metrics, _ in group])
        losses[loss] = entry

    reference = losses.get(REFERENCE_LOSS)
    reference_time = reference["seconds_per_iteration"]["mean"] if reference is not None else math.nan
    for entry in losses.values():
        time = entry["seconds_per_iteration"]["mean"]
        ok = math.isfinite(reference_time) and reference_time > 0 and math.isfinite(time)
        entry["relative_time"] = time / reference_time if ok else NA
    return {"metrics": list(SUMMARY_METRICS), "reference_loss": REFERENCE_LOSS, "losses": losses,
            "timing": timing_conditions(runs)}


TIMING_CONDITIONS: tuple[str, ...] = ("host", "device", "accelerator", "torch_threads", "precision", "world_size",
                                      "torch")
"""What must be equal for two runs' seconds per iteration to be compared (``metrics["timing"]``)."""


def timing_conditions(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the runs' times per iteration were measured under the same conditions, and why not.

    Returns ``{"comparable": bool, "notes": [str, ...]}``. Not comparable when a run has no timing record
    (trained by an older version: mean including warm-up), when one of :data:`TIMING_CONDITIONS` differs
    between runs, when a run ran beside other work (``shared``: load average above its own threads), or
    when a run was too short to time any steady-state iteration.
    """
    notes: list[str] = []
    records = []
    for run in runs:
        label = f"{run.get('loss')} seed {run.get('seed')}"
        timing = run["metrics"].get("timing") if isinstance(run.get("metrics"), Mapping) else None
        if not isinstance(timing, Mapping):
            notes.append(f"{label}: no timing record (an older run: mean over all iterations, warm-up included)")
            continue
        records.append((label, timing))
        if not timing.get("iterations_timed"):
            notes.append(f"{label}: too short to time (no iteration after the "
                         f"{timing.get('warmup_iterations_skipped')} warm-up ones)")
        if timing.get("shared"):
            notes.append(f"{label}: other work ran beside it (mean load average {timing.get('load_average'):.1f} "
                         f"with {timing.get('torch_threads')} threads of its own)")
    for key in TIMING_CONDITIONS:
        values = {str(timing.get(key)) for _, timing in records}
        if len(values) > 1:
            per_run = ", ".join(f"{label}: {timing.get(key)}" for label, timing in records)
            notes.append(f"{key} differs between runs ({per_run})")
    return {"comparable": not notes, "notes": notes}


def _timing_section(summary: Mapping[str, Any]) -> list[str]:
    timing = summary.get("timing") or {"comparable": True, "notes": []}
    if timing["comparable"]:
        return ["Times: median of each run's steady-state training iterations (warm-up, validation, checkpoints "
                "and reports excluded), all measured under the same conditions.", ""]
    return ["**Times were not measured under the same conditions; `s / iteration` and `time vs focal` are not "
            "comparable:**", "", *[f"- {note}" for note in timing["notes"]], ""]


def _best(summary: Mapping[str, Any], metric: str) -> float:
    means = [e[metric]["mean"] for e in summary["losses"].values() if math.isfinite(e[metric]["mean"])]
    if len(summary["losses"]) < 2 or not means:
        return math.nan
    return min(means) if metric.startswith("oLRP") else max(means)


def _report_links(entry: Mapping[str, Any], out_dir: Path) -> str:
    links = []
    for seed, run_dir in zip(entry["seeds"], entry["run_dirs"], strict=True):
        if run_dir is None:
            links.append(f"seed {seed}")
            continue
        report = Path(run_dir) / REPORT_MD
        if report.is_file():
            relative = Path(os.path.relpath(report.resolve(), out_dir.resolve())).as_posix()
            links.append(f"[seed {seed}]({relative})")
        else:
            links.append(f"seed {seed} (no {REPORT_MD})")
    return ", ".join(links)


def _relative_time_cell(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, float) and math.isfinite(value) else NA


def _settings_section(settings: Mapping[str, Any] | None) -> list[str]:
    if not settings:
        return []
    rows = [[str(key), _setting_text(value)] for key, value in settings.items()]
    return ["## Data and settings", "", "Every run was trained and evaluated with:", "",
            markdown_table(["Setting", "Value"], rows, align="ll")]


def _setting_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(to_jsonable(value), ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def _comparison_markdown(summary: Mapping[str, Any], out_dir: Path,
                         settings: Mapping[str, Any] | None = None) -> str:
    losses = summary["losses"]
    best = {metric: _best(summary, metric) for metric in PERCENT_METRICS}
    header = ["Loss", "Seeds", *[f"{m} {'↓' if m.startswith('oLRP') else '↑'}" for m in PERCENT_METRICS],
              "s / iteration", f"time vs {REFERENCE_LOSS}", "Reports"]
    rows = []
    for loss, entry in losses.items():
        cells = [loss, str(entry["n_runs"])]
        for metric in PERCENT_METRICS:
            stat = entry[metric]
            cell = format_mean_std(stat["mean"], stat["std"])
            if math.isfinite(best[metric]) and math.isfinite(stat["mean"]) and np.isclose(stat["mean"], best[metric]):
                cell = f"**{cell}**"
            if cell != NA and 0 < stat["n"] < entry["n_runs"]:
                cell += f" (n={stat['n']})"
            cells.append(cell)
        time = entry["seconds_per_iteration"]
        cells.append(format_mean_std(time["mean"], time["std"], percent=False, decimals=4))
        cells.append(_relative_time_cell(entry["relative_time"]))
        cells.append(_report_links(entry, out_dir))
        rows.append(cells)

    per_run_header = ["Loss", "Seed", "AP", "AP50", "AP75", "oLRP", "s / iteration"]
    per_run = []
    for loss, entry in losses.items():
        for i, seed in enumerate(entry["seeds"]):
            per_run.append([loss, str(seed)] + [format_percent(entry[m]["values"][i]) for m in
                                                ("AP", "AP50", "AP75", "oLRP")]
                           + [format_seconds(entry["seconds_per_iteration"]["values"][i])])

    reference_note = (
        f"time vs {REFERENCE_LOSS}: mean seconds per iteration divided by that of `{REFERENCE_LOSS}`."
        if REFERENCE_LOSS in losses
        else f"time vs {REFERENCE_LOSS}: n/a — no `{REFERENCE_LOSS}` run among the runs compared."
    )
    n_runs = sum(e["n_runs"] for e in losses.values())
    return "\n".join([
        "# Loss comparison",
        "",
        f"{len(losses)} losses, {n_runs} runs. AP-type (↑ higher is better) and oLRP-type (↓ lower is better) "
        "metrics in percent, mean ± sample std over seeds (0 for one seed); best mean per column in bold; "
        "`n/a` where undefined (e.g. no object of that size), `(n=k)` when only k seeds define the value. "
        + reference_note,
        "",
        markdown_table(header, rows, align=["l"] + ["r"] * (len(header) - 2) + ["l"]),
        f"![AP, AP50, AP75 and oLRP per loss]({COMPARISON_PNG})",
        "",
        *_timing_section(summary),
        *_settings_section(settings),
        "## Individual runs",
        "",
        markdown_table(per_run_header, per_run),
        f"Machine-readable summary: [{COMPARISON_JSON}]({COMPARISON_JSON}).",
        "",
    ])


def write_comparison(out_dir: str | os.PathLike[str], runs: Sequence[Mapping[str, Any]], *,
                     settings: Mapping[str, Any] | None = None) -> Path:
    """Summarize ``runs`` and write ``out_dir/comparison.json``, ``comparison.png`` and ``comparison.md``
    (in that order, each atomically; the Markdown table links each run's ``report.md``).

    ``settings`` (e.g. :meth:`~detlosses.training.TrainConfig.run_settings`: data, validation data,
    detector, schedule) are recorded in both files (``"settings"`` in the JSON, a "Data and settings"
    table in the Markdown), so a comparison always says what it was measured on.

    Returns:
        The path of ``comparison.md``.

    Raises:
        ValueError, KeyError, TypeError: see :func:`summarize_runs`.
    """
    out_dir = Path(out_dir)
    summary = summarize_runs(runs)
    if settings is not None:
        summary = {**summary, "settings": dict(settings)}
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(summary), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(out_dir / COMPARISON_JSON, text)
    plot_comparison(summary, out_dir / COMPARISON_PNG)
    return atomic_write_text(out_dir / COMPARISON_MD, _comparison_markdown(summary, out_dir, settings))
