"""Lightning callbacks of a training run, and the GHM gradient-norm log."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

from .._atomic import atomic_write_json

__all__ = ["EpochSummary", "IterationTimer", "ValidationTracker", "append_gradient_norms"]


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


class EpochSummary(pl.Callback):
    """One line per training epoch on standard output (global rank 0 only), for runs whose output is not a
    terminal (a log file, a pipe, a batch job) where a progress bar shows nothing useful::

        epoch 3/12  step 96  loss 0.8125  lr 0.01  0.213 s/it  val AP 23.4

    ``loss`` is the mean training loss of the epoch, ``lr`` the learning rate at its end, ``s/it`` the mean
    wall time of its iterations (data loading excluded), ``val AP`` the epoch's validation AP when it was
    validated (``n/a`` when undefined: no ground-truth box in the validation data).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._reset()

    def _reset(self) -> None:
        self._loss_sum, self._losses, self._seconds, self._iterations = 0.0, 0, 0.0, 0
        self._start: float | None = None
        self._val_ap: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            self._seconds += time.perf_counter() - self._start
            self._iterations += 1
            self._start = None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += float(loss.detach())
            self._losses += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get("val/AP")
        self._val_ap = float(value) if value is not None else math.nan

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        epoch = f"epoch {trainer.current_epoch + 1}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epoch += f"/{trainer.max_epochs}"
        parts = [epoch, f"step {trainer.global_step}"]
        parts.append(f"loss {self._loss_sum / self._losses:.4f}" if self._losses else "loss n/a")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if self._iterations:
            parts.append(f"{self._seconds / self._iterations:.3f} s/it")
        if self._val_ap is not None:
            parts.append(f"val AP {100 * self._val_ap:.1f}" if math.isfinite(self._val_ap) else "val AP n/a")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


class ValidationTracker(pl.Callback):
    """Remembers the global step of the last validation run during ``fit`` (``None`` before any), so
    that the final metrics can reuse it instead of validating (and logging) the same weights again."""

    def __init__(self) -> None:
        self.last_step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.last_step = int(trainer.global_step)


def append_gradient_norms(path: str | os.PathLike, edges: list[float], epoch: int, counts: list[float]) -> Path:
    """Add (or replace) one epoch's GHM-C gradient-norm histogram in ``gradient_norms.json``."""
    path = Path(path)
    payload = json.loads(path.read_text()) if path.exists() else {"edges": edges, "epochs": []}
    payload["epochs"] = [e for e in payload["epochs"] if e["epoch"] != epoch]
    payload["epochs"].append({"epoch": epoch, "counts": counts})
    payload["epochs"].sort(key=lambda e: e["epoch"])
    return atomic_write_json(payload, path)
