"""Reading the training log ``metrics.csv`` written by Lightning's ``CSVLogger``.

The file has one header row with every key ever logged (``epoch``, ``step``, ``train/loss``,
``train/loss_cls``, ``val/AP``, ``lr-SGD``, ...) and *sparse* rows: a row holds only the keys logged at
that step, the other cells are empty. Logged NaN / infinities appear as ``nan`` / ``inf``.

:func:`read_training_log` parses it into float columns (NaN where a cell is empty) plus a "present" mask
per column, so that an empty cell (not logged) is never confused with a logged NaN (a diverged loss).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LOSS_PREFIX", "LR_PREFIX", "PLATEAU_TOLERANCE", "VAL_PREFIX", "TrainingLog", "read_training_log",
           "validation_trend"]

PLATEAU_TOLERANCE = 0.01
"""A run has stopped improving when its last validation AP is less than this (1 AP) above the one before."""

LOSS_PREFIX = "train/loss"
"""Columns starting with this are loss components, plotted against ``step``."""
VAL_PREFIX = "val/"
"""Columns starting with this are validation metrics, plotted against ``epoch``."""
LR_PREFIX = "lr-"
"""Columns starting with this are learning rates (Lightning's ``LearningRateMonitor``)."""


@dataclass(frozen=True)
class TrainingLog:
    """A parsed ``metrics.csv``.

    Attributes:
        path: the file read.
        columns: column names, in file order.
        values: ``name -> (R,)`` float64 values (NaN where the cell is empty).
        present: ``name -> (R,)`` bool, the cell is non-empty.
    """

    path: Path
    columns: tuple[str, ...]
    values: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    @property
    def num_rows(self) -> int:
        return int(next(iter(self.values.values())).shape[0]) if self.values else 0

    @property
    def loss_columns(self) -> list[str]:
        """The ``train/loss*`` columns that hold at least one value, in file order."""
        return [c for c in self.columns if c.startswith(LOSS_PREFIX) and self.present[c].any()]

    @property
    def val_columns(self) -> list[str]:
        """The ``val/*`` columns that hold at least one value, in file order."""
        return [c for c in self.columns if c.startswith(VAL_PREFIX) and self.present[c].any()]

    @property
    def lr_columns(self) -> list[str]:
        """The ``lr-*`` columns that hold at least one value, in file order."""
        return [c for c in self.columns if c.startswith(LR_PREFIX) and self.present[c].any()]

    def series(self, key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` over the rows where both ``key`` and ``x`` were logged (y may hold NaN/inf).

        Raises:
            KeyError: naming the file and the column when ``key`` or ``x`` is not a column.
        """
        for name in (key, x):
            if name not in self.values:
                raise KeyError(f"{self.path}: no column {name!r} (columns: {', '.join(self.columns)})")
        rows = self.present[key] & self.present[x]
        return self.values[x][rows], self.values[key][rows]

    def per_epoch(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, y)`` of ``key``, one value per epoch (the last one logged in that epoch), sorted."""
        epochs, y = self.series(key, "epoch")
        if epochs.size == 0:
            return epochs, y
        order = np.argsort(epochs, kind="stable")
        epochs, y = epochs[order], y[order]
        last = np.append(epochs[1:] != epochs[:-1], True)
        return epochs[last], y[last]


def read_training_log(path: str | os.PathLike[str]) -> TrainingLog:
    """Parse Lightning's sparse ``metrics.csv``.

    A truncated last row (interrupted run) is read as far as it goes; missing cells count as empty.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file when it has no header, no ``step`` column, or a cell (line and column
            named) that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path} is empty (no header row)")
        columns = tuple(h.strip() for h in header)
        if "step" not in columns:
            raise ValueError(f"{path}: no 'step' column in header {list(columns)}")
        cells: list[list[float]] = [[] for _ in columns]
        flags: list[list[bool]] = [[] for _ in columns]
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) > len(columns):
                raise ValueError(f"{path}, line {line_number}: {len(row)} cells for {len(columns)} columns")
            for j in range(len(columns)):
                text = row[j].strip() if j < len(row) else ""
                if text == "":
                    cells[j].append(np.nan)
                    flags[j].append(False)
                    continue
                try:
                    cells[j].append(float(text))
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line_number}, column {columns[j]!r}: {text!r} is not a number"
                    ) from None
                flags[j].append(True)
    return TrainingLog(
        path=path,
        columns=columns,
        values={c: np.asarray(v, dtype=np.float64) for c, v in zip(columns, cells, strict=True)},
        present={c: np.asarray(f, dtype=bool) for c, f in zip(columns, flags, strict=True)},
    )


def validation_trend(path: str | os.PathLike[str], key: str = "val/AP",
                     tolerance: float = PLATEAU_TOLERANCE) -> dict[str, object]:
    """Whether a run had stopped improving: its last two validations of ``key`` from its ``metrics.csv``.

    Returns ``{"epochs", "values", "last_change", "stopped"}``: the validated epochs and values,
    ``last - previous`` and ``last_change < tolerance`` (a fall counts as stopped); ``last_change`` and
    ``stopped`` are ``None`` with fewer than two finite validations (or no log).
    """
    try:
        epochs, values = read_training_log(path).per_epoch(key)
    except (FileNotFoundError, KeyError, ValueError):
        epochs, values = np.zeros(0), np.zeros(0)
    finite = np.isfinite(values)
    epochs, values = epochs[finite], values[finite]
    change = float(values[-1] - values[-2]) if values.size >= 2 else None
    return {"epochs": [int(e) for e in epochs], "values": [float(v) for v in values], "last_change": change,
            "stopped": None if change is None else bool(change < tolerance)}
