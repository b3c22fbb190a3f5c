"""Train, evaluate and compare: the jobs behind ``detlosses train / eval / compare``.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}.ckpt``, ``metrics.csv`` (CSV
logger), ``tensorboard/``, ``metrics.json`` (final evaluation), ``report.md`` with ``plots/``,
and for GHM runs ``gradient_norms.json``. Everything is written atomically or by Lightning's
checkpointing, so a killed run resumes (``resume=True``) from its last epoch checkpoint and ends
with the same result as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..evaluation import write_metrics_json
from .callbacks import IterationTimer
from .config import TrainConfig, save_config
from .datamodule import DetectionDataModule
from .module import DetectionModule

__all__ = ["RunResult", "train", "evaluate_checkpoint", "compare", "quiet_lightning"]

LOG = logging.getLogger("detlosses")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    report: Path | None


def quiet_lightning() -> None:
    """Silence Lightning's informational chatter (kept: warnings about real problems)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")


def _trainer(config: TrainConfig, run_dir: Path, *, for_fit: bool, timer: IterationTimer | None = None):
    callbacks: list[pl.Callback] = []
    loggers: list[Any] | bool = False
    if for_fit:
        # Checkpoints are written after the module's epoch-end hook (which updates epoch-level
        # loss state such as aLRP's self-balance weight), so a resumed run continues exactly.
        callbacks = [
            ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                            enable_version_counter=False, save_on_train_epoch_end=True),
            ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/AP", mode="max",
                            save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True,
                            every_n_epochs=config.val_every),
            LearningRateMonitor(logging_interval="step"),
        ]
        if timer is not None:
            callbacks.append(timer)
        loggers = [CSVLogger(run_dir, name="", version=""),
                   TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)]
    return pl.Trainer(
        max_epochs=config.epochs if config.max_steps is None else -1,
        max_steps=-1 if config.max_steps is None else config.max_steps,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        precision=config.precision,
        gradient_clip_val=config.gradient_clip,
        callbacks=callbacks,
        logger=loggers,
        enable_checkpointing=for_fit,
        log_every_n_steps=config.log_every,
        check_val_every_n_epoch=config.val_every,
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        num_sanity_val_steps=0,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=run_dir,
    )


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _merge_csv_log(path: Path, earlier: list[dict[str, str]], last_epoch: int, global_step: int) -> None:
    """Lightning's CSV logger starts a fresh file on resume: put the rows logged up to the
    checkpoint (epoch ``last_epoch`` complete, ``global_step`` steps) back in front of the new
    ones; rows of the interrupted epoch are dropped."""

    def before_checkpoint(row: dict[str, str]) -> bool:
        if row.get("epoch") not in (None, ""):
            return int(float(row["epoch"])) <= last_epoch
        return row.get("step") not in (None, "") and int(float(row["step"])) < global_step

    kept = [row for row in earlier if before_checkpoint(row)]
    rows = kept + _read_csv_rows(path)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    fields = ["epoch", "step"] + sorted(f for f in fields if f not in ("epoch", "step"))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _write_outputs(run_dir: Path, metrics: dict[str, Any], details, title: str) -> Path | None:
    write_metrics_json(metrics, run_dir / "metrics.json")
    try:
        from ..reporting import write_run_report
    except ImportError:  # reporting needs matplotlib (the [train] extra)
        return None
    return write_run_report(run_dir, metrics, details, title=title)


def train(config: TrainConfig, *, resume: bool = False) -> RunResult:
    """Train ``config``, evaluate the final model on the validation split, write the report."""
    run_dir = Path(config.out)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume and last.exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another --out")
    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = DetectionDataModule(config)
    datamodule.setup("fit")
    module = DetectionModule(config.to_dict(), datamodule.classes)
    module.run_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    timer = IterationTimer()
    ckpt_path = str(last) if resume and last.exists() else None
    earlier_log = _read_csv_rows(run_dir / "metrics.csv") if ckpt_path else []
    resumed_at = (0, 0)
    if ckpt_path:
        saved = torch.load(last, map_location="cpu", weights_only=False)
        resumed_at = (int(saved.get("epoch", 0)), int(saved.get("global_step", 0)))
    trainer = _trainer(config, run_dir, for_fit=True, timer=timer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.is_global_zero and earlier_log:
        _merge_csv_log(run_dir / "metrics.csv", earlier_log, *resumed_at)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = dict(module.last_metrics or {})
    metrics["seconds_per_iteration"] = timer.seconds_per_iteration
    metrics["loss"] = config.loss
    metrics["diverged"] = bool(module.diverged)
    metrics["run"] = {
        "loss": config.loss, "model": config.model, "backbone": config.backbone, "data": config.data,
        "epochs": config.epochs, "batch_size": config.batch_size, "image_size": config.image_size,
        "seed": config.seed, "precision": config.precision, "devices": config.devices,
        "pretrained_backbone": config.pretrained_backbone, "iterations": int(trainer.global_step),
        "torch": torch.__version__,
    }
    report = None
    if trainer.is_global_zero:
        report = _write_outputs(run_dir, metrics, module.last_details, f"{config.loss} — {config.model}")
    return RunResult(run_dir, metrics, report)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    accelerator: str = "auto",
) -> RunResult:
    """Evaluate a checkpoint (its own validation data unless ``data``/``split`` are given)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        hparams = saved["hyper_parameters"]
        values = dict(hparams["config"])
        classes = list(hparams["classes"])
    except (KeyError, TypeError):
        raise ValueError(f"{checkpoint} is not a detlosses training checkpoint") from None
    values.update(pretrained_backbone=False, devices=1, strategy="auto", accelerator=accelerator)
    if data is not None:
        values["data"] = data
    if split is not None:
        values["val_split"] = split
    if batch_size is not None:
        values["batch_size"] = batch_size
    out_dir = Path(out) if out is not None else checkpoint.parent.parent / "eval"
    values["out"] = str(out_dir)
    config = TrainConfig.from_dict(values)
    datamodule = DetectionDataModule(config)
    datamodule.setup("validate")
    if list(datamodule.classes) != classes:
        raise ValueError(
            f"the data's classes {datamodule.classes} differ from the checkpoint's {classes}"
        )
    module = DetectionModule(config.to_dict(), classes)
    module.load_state_dict(saved["state_dict"])
    trainer = _trainer(config, out_dir, for_fit=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = dict(module.last_metrics or {})
    metrics["loss"] = config.loss
    metrics["run"] = {"checkpoint": str(checkpoint), "data": config.data, "split": config.val_split,
                      "loss": config.loss, "model": config.model, "backbone": config.backbone}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _write_outputs(out_dir, metrics, module.last_details, f"evaluation of {checkpoint.name}")
    return RunResult(out_dir, metrics, report)


def compare(
    base: TrainConfig, losses: list[str], seeds: list[int], out: str | os.PathLike
) -> tuple[Path, list[dict[str, Any]]]:
    """Train every loss with every seed (same detector, data, schedule); write ``comparison.md``.

    Finished runs (with ``metrics.json``) are reused and unfinished ones resumed, so an
    interrupted comparison continues where it stopped.
    """
    out = Path(out)
    runs = []
    for loss in losses:
        for seed in seeds:
            run_dir = out / f"{loss}-seed{seed}"
            config = dataclasses.replace(base, loss=loss, seed=seed, out=str(run_dir),
                                         loss_options=base.loss_options if loss == base.loss else {})
            metrics_file = run_dir / "metrics.json"
            if metrics_file.exists():
                LOG.info("compare: %s seed %d already finished, reusing %s (delete it to rerun)", loss, seed, run_dir)
                metrics = json.loads(metrics_file.read_text())
            else:
                LOG.info("compare: training %s seed %d in %s", loss, seed, run_dir)
                metrics = train(config, resume=True).metrics
            runs.append({"loss": loss, "seed": seed, "metrics": metrics, "run_dir": str(run_dir)})
    from ..reporting import write_comparison

    return write_comparison(out, runs), runs
