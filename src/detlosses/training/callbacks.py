"""Lightning callbacks of a training run, and the GHM gradient-norm log."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from .._atomic import atomic_write_json

__all__ = ["EpochRandomStreams", "EpochSummary", "IterationTimer", "ValidationTracker", "append_gradient_norms"]


class IterationTimer(pl.Callback):
    """Median wall time of the steady-state training iterations, and the conditions it was measured in.

    An iteration is forward, backward and optimiser step (data loading, validation, checkpointing and
    report writing happen outside it). The first ``skip`` iterations of every training *process* (a
    resumed run warms up again) are warm-up — lazy initialisation, allocator growth, first-call
    dispatch — and not timed. The time reported is the median of the timed iterations, robust to the
    odd slow step (a logging read, a garbage collection); on CUDA the device is synchronised at both
    ends of a timed iteration so the time is the device's, not the launch queue's. The timed
    durations are saved in checkpoints, so a resumed run reports the median over all of them.

    :meth:`summary` also records where and how the run was timed (host, processor or GPU, threads,
    precision, torch version) and how busy the machine was: the mean 1-minute load average over the
    timed iterations, and ``shared`` when it exceeded this run's own threads by half a core or more —
    other work was running beside it, so its time is not comparable with a run on a quiet machine.
    """

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.durations: list[float] = []
        self.loads: list[float] = []
        self.seen_here = 0  # iterations of this process (warm-up is per process)
        self._start: float | None = None
        self._cuda = False
        self._conditions: dict[str, Any] = {}

    @property
    def seconds_per_iteration(self) -> float:
        """Median over the timed iterations; NaN when the run was too short to time any."""
        return float(statistics.median(self.durations)) if self.durations else float("nan")

    def on_train_start(self, trainer, pl_module) -> None:
        device = pl_module.device
        self._cuda = device.type == "cuda"
        self._conditions = {
            "host": socket.gethostname(),
            "device": torch.cuda.get_device_name(device) if self._cuda else _cpu_name(),
            "accelerator": device.type,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "precision": str(trainer.precision),
            "world_size": int(trainer.world_size),
            "torch": torch.__version__,
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen_here >= self.skip and self._cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        self.seen_here += 1
        if self.seen_here > self.skip:
            if self._cuda:
                torch.cuda.synchronize()
            self.durations.append(time.perf_counter() - self._start)
            if hasattr(os, "getloadavg"):
                self.loads.append(os.getloadavg()[0])
        self._start = None

    def summary(self) -> dict[str, Any]:
        """``metrics["timing"]``: the statistic, how many iterations it rests on, and the conditions."""
        own_threads = self._conditions.get("torch_threads") or 1
        load = float(statistics.fmean(self.loads)) if self.loads else None
        return {
            "statistic": "median of steady-state iterations",
            "seconds_per_iteration": self.seconds_per_iteration,
            "iterations_timed": len(self.durations),
            "warmup_iterations_skipped": self.skip,
            **self._conditions,
            "load_average": load,
            "shared": bool(load is not None and load - own_threads >= 0.5),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"durations": list(self.durations), "loads": list(self.loads)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.durations = [float(v) for v in state_dict.get("durations", [])]
        self.loads = [float(v) for v in state_dict.get("loads", [])]


class EpochRandomStreams(pl.Callback):
    """Seeds the global random generators (torch CPU and CUDA, Python, NumPy) at the first batch of every
    training epoch from ``(seed, epoch)``.

    Lightning's checkpoint holds no random state, and a resumed run creates its data loader's iterator
    (which draws from the global generator) at another point than an uninterrupted run does. So a run with
    dropout (Deformable DETR) or proposal sampling (Faster R-CNN's ``ce``) would continue on another random
    stream after a resume. Seeding each epoch at its first batch makes the draws of an epoch a function of
    the run's seed and the epoch alone, so a resumed run continues exactly as one never interrupted.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def epoch_seed(self, epoch: int) -> int:
        return (self.seed * 1_000_003 + int(epoch) * 7_919 + 1) % (2**31 - 1)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx != 0:
            return
        seed = self.epoch_seed(trainer.current_epoch)
        torch.manual_seed(seed)  # CPU and every CUDA device
        random.seed(seed)
        np.random.seed(seed)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
