"""The run directory contract: which files a training run writes and how the reporting layer reads them.

A training run writes into ``run_dir/``:

* ``metrics.csv`` (:data:`METRICS_CSV`): Lightning's ``CSVLogger`` log (see
  :mod:`detlosses.reporting.training_log`);
* ``metrics.json`` (:data:`METRICS_JSON`): the final :func:`~detlosses.evaluation.evaluate_detections`
  metrics plus ``seconds_per_iteration``, ``loss`` (the loss name) and ``run`` (run settings);
* ``gradient_norms.json`` (:data:`GRADIENT_NORMS_JSON`, GHM runs only): per-epoch histograms of the GHM-C
  gradient norm ``g = |sigmoid(x) - t|``: ``{"edges": [B + 1 floats], "epochs": [{"epoch": int,
  "counts": [B ints]}, ...]}``.

The reporting layer adds ``report.md`` (:data:`REPORT_MD`) and ``plots/*.png`` (:data:`PLOTS_DIR`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GRADIENT_NORMS_JSON",
    "METRICS_CSV",
    "METRICS_JSON",
    "PLOTS_DIR",
    "REPORT_MD",
    "GradientNormHistograms",
    "load_run",
    "read_gradient_norms",
    "read_json",
    "read_metrics_json",
]

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
GRADIENT_NORMS_JSON = "gradient_norms.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse the JSON file at ``path``.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file when it is not valid JSON (e.g. truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def read_metrics_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metrics.json`` of ``run_dir`` (NaN values come back as ``None``).

    Raises:
        FileNotFoundError: when ``run_dir/metrics.json`` does not exist.
        ValueError: when it is not valid JSON or not a JSON object.
    """
    path = Path(run_dir) / METRICS_JSON
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(metrics).__name__}")
    return metrics


def load_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One entry for :func:`~detlosses.reporting.comparison.summarize_runs` from a finished run directory.

    The loss name is ``metrics["loss"]`` (or ``metrics["run"]["loss"]``), the seed ``metrics["run"]["seed"]``.

    Returns:
        ``{"loss": str, "seed": int, "metrics": dict, "run_dir": Path}``.

    Raises:
        FileNotFoundError: when ``metrics.json`` is missing.
        KeyError: naming the file and key when the loss name or the seed is missing.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics_json(run_dir)
    run = metrics.get("run") if isinstance(metrics.get("run"), Mapping) else {}
    loss = metrics.get("loss", run.get("loss"))
    if not isinstance(loss, str) or not loss:
        raise KeyError(f"{run_dir / METRICS_JSON}: no loss name (key 'loss' or 'run.loss')")
    seed = run.get("seed", metrics.get("seed"))
    if seed is None or isinstance(seed, bool) or not isinstance(seed, int):
        raise KeyError(f"{run_dir / METRICS_JSON}: no integer seed (key 'run.seed' or 'seed')")
    return {"loss": loss, "seed": seed, "metrics": metrics, "run_dir": run_dir}


@dataclass(frozen=True)
class GradientNormHistograms:
    """Per-epoch histograms of the GHM-C gradient norm.

    Attributes:
        edges: ``(B + 1,)`` increasing bin edges (``0 .. 1``; the last may be ``1 + 1e-6``).
        epochs: ``(E,)`` epoch numbers, increasing.
        counts: ``(E, B)`` element counts per epoch and bin.
    """

    edges: np.ndarray
    epochs: np.ndarray
    counts: np.ndarray


def read_gradient_norms(source: str | os.PathLike[str] | Mapping[str, Any]) -> GradientNormHistograms:
    """Read and validate ``gradient_norms.json`` (a path, or its already-parsed dict).

    Raises:
        FileNotFoundError: when the file does not exist.
        KeyError: naming the file and the missing key (``edges``, ``epochs``, ``epoch``, ``counts``).
        ValueError: on inconsistent content (edge count, non-increasing edges, negative counts, no epochs).
    """
    if isinstance(source, Mapping):
        name, data = "gradient norms", source
    else:
        name, data = str(source), read_json(source)
        if not isinstance(data, Mapping):
            raise ValueError(f"{name} must hold a JSON object, got {type(data).__name__}")
    for key in ("edges", "epochs"):
        if key not in data:
            raise KeyError(f"{name}: missing key {key!r}")
    edges = np.asarray(data["edges"], dtype=np.float64)
    if edges.ndim != 1 or edges.shape[0] < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"{name}: 'edges' must be at least 2 finite, increasing numbers, got {data['edges']!r}")
    entries = data["epochs"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{name}: 'epochs' must be a non-empty list")
    epochs, counts = [], []
    for i, entry in enumerate(entries):
        for key in ("epoch", "counts"):
            if not isinstance(entry, Mapping) or key not in entry:
                raise KeyError(f"{name}: epochs[{i}] has no key {key!r}")
        row = np.asarray(entry["counts"], dtype=np.float64)
        if row.shape != (edges.shape[0] - 1,):
            raise ValueError(
                f"{name}: epochs[{i}].counts has {row.size} values for {edges.shape[0] - 1} bins "
                f"({edges.shape[0]} edges)"
            )
        if not np.all(np.isfinite(row)) or np.any(row < 0):
            raise ValueError(f"{name}: epochs[{i}].counts must be finite and non-negative")
        epoch = entry["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
            raise ValueError(f"{name}: epochs[{i}].epoch must be a number, got {epoch!r}")
        epochs.append(int(epoch))
        counts.append(row)
    order = np.argsort(np.asarray(epochs), kind="stable")
    return GradientNormHistograms(
        edges=edges,
        epochs=np.asarray(epochs, dtype=np.int64)[order],
        counts=np.stack(counts)[order],
    )
