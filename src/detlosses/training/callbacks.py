"""Lightning callbacks of a training run, and the GHM gradient-norm log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from .._atomic import atomic_write_json

__all__ = ["IterationTimer", "append_gradient_norms"]


class IterationTimer(pl.Callback):
    """Wall time of training iterations (forward, backward, optimiser step), data loading excluded.

    The first ``skip`` iterations of a run are warm-up and not counted. The running totals are
    saved in checkpoints, so a resumed run reports the mean over all its timed iterations.
    """

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.total = 0.0
        self.count = 0
        self.seen = 0
        self.warmup_total = 0.0
        self._start: float | None = None

    @property
    def seconds_per_iteration(self) -> float:
        """Mean over the timed iterations (over all of them if the run was shorter than the warm-up)."""
        if self.count:
            return self.total / self.count
        return self.warmup_total / self.seen if self.seen else float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        self.seen += 1
        if self.seen > self.skip:
            self.total += elapsed
            self.count += 1
        else:
            self.warmup_total += elapsed
        self._start = None

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "seen": self.seen, "warmup_total": self.warmup_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = float(state_dict.get("total", 0.0))
        self.count = int(state_dict.get("count", 0))
        self.seen = int(state_dict.get("seen", 0))
        self.warmup_total = float(state_dict.get("warmup_total", 0.0))


def append_gradient_norms(path: str | os.PathLike, edges: list[float], epoch: int, counts: list[float]) -> Path:
    """Add (or replace) one epoch's GHM-C gradient-norm histogram in ``gradient_norms.json``."""
    path = Path(path)
    payload = json.loads(path.read_text()) if path.exists() else {"edges": edges, "epochs": []}
    payload["epochs"] = [e for e in payload["epochs"] if e["epoch"] != epoch]
    payload["epochs"].append({"epoch": epoch, "counts": counts})
    payload["epochs"].sort(key=lambda e: e["epoch"])
    return atomic_write_json(payload, path)
