"""Train, evaluate and compare: the jobs behind ``detlosses train / eval / compare``.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}.ckpt``, ``metrics.csv`` (CSV
logger), ``tensorboard/``, ``metrics.json`` (final evaluation), ``report.md`` with ``plots/``,
``data_split.json`` for a ``val_fraction`` hold-out, and for GHM runs ``gradient_norms.json``.
Everything is written atomically or by Lightning's
checkpointing, so a killed run resumes (``resume=True``) from its last epoch checkpoint and ends
with the same result as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .._atomic import atomic_write_text
from ..evaluation import write_metrics_json
from .callbacks import EpochRandomStreams, EpochSummary, IterationTimer, ValidationTracker
from .config import TrainConfig, config_differences, save_config
from .datamodule import DATA_SPLIT_JSON, DetectionDataModule
from .module import DetectionModule
from .recipes import apply_recipe, recipe_for

__all__ = ["RunResult", "train", "evaluate_checkpoint", "compare", "quiet_lightning"]

LOG = logging.getLogger("detlosses")


@dataclass
class RunResult:
    """What a run left: its directory, final metrics and report; ``is_primary`` is false on the
    data-parallel ranks other than global rank 0 (which print and write nothing)."""

    run_dir: Path
    metrics: dict[str, Any]
    report: Path | None
    is_primary: bool = True


def launched_rank() -> int:
    """The global rank this process was launched as (``RANK`` / ``LOCAL_RANK`` set by Lightning's DDP
    launcher or torchrun; 0 for a plain process)."""
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def quiet_lightning() -> None:
    """Silence Lightning's informational chatter (kept: warnings about real problems)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")


def _progress_bar_visible(config: TrainConfig) -> bool:
    """Lightning's progress bar only where someone watches a terminal; elsewhere one line per epoch."""
    return config.progress_bar and sys.stdout.isatty()


def _trainer(config: TrainConfig, run_dir: Path, *, for_fit: bool, extra_callbacks: list[pl.Callback] = (),
             keep_best: bool = True, timer: IterationTimer | None = None):
    callbacks: list[pl.Callback] = []
    loggers: list[Any] | bool = False
    if for_fit:
        # Checkpoints are written after the module's epoch-end hook (which updates epoch-level
        # loss state such as aLRP's self-balance weight), so a resumed run continues exactly.
        callbacks = [
            ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                            enable_version_counter=False, save_on_train_epoch_end=True),
            LearningRateMonitor(logging_interval="step"),
            EpochRandomStreams(config.seed),
        ]
        if keep_best:  # needs val/AP, which is undefined without ground-truth boxes
            callbacks.insert(1, ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="best", monitor="val/AP", mode="max", save_top_k=1,
                enable_version_counter=False, save_on_train_epoch_end=True, every_n_epochs=config.val_every))
        if config.progress_bar and not _progress_bar_visible(config):
            callbacks.append(EpochSummary())
        elif _progress_bar_visible(config):  # refreshed (the loss read from the device) once per logging interval
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, config.log_every)))
        callbacks.extend(extra_callbacks)
        if timer is not None:  # first: its batch-end hook runs before the others' (progress, logging)
            callbacks.insert(0, timer)
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
        enable_progress_bar=_progress_bar_visible(config),
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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _write_outputs(run_dir: Path, metrics: dict[str, Any], details, title: str) -> Path | None:
    try:
        from ..reporting import score_iou_spearman, write_run_report
    except ImportError:  # reporting needs matplotlib (the [train] extra)
        write_metrics_json(metrics, run_dir / "metrics.json")
        return None
    if details is not None:  # Spearman's rho between score and IoU of the true positives (NaN when undefined)
        metrics["score_iou_spearman"] = score_iou_spearman(details)
    write_metrics_json(metrics, run_dir / "metrics.json")
    return write_run_report(run_dir, metrics, details, title=title)


_UNREADABLE_CHECKPOINT = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError,
                          AttributeError, ImportError, IndexError, KeyError, TypeError)
"""What ``torch.load`` raises for a file that is not a (readable) PyTorch checkpoint."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of checkpoint ``path`` (on the CPU).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory, or not a checkpoint (a text file, a truncated file, ...).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, expected a .ckpt file written by detlosses train")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except _UNREADABLE_CHECKPOINT as err:
        raise ValueError(f"{path} is not a detlosses checkpoint (torch.load cannot read it: "
                         f"{type(err).__name__}: {err})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a detlosses checkpoint (it holds a {type(saved).__name__})")
    return saved


def check_output_dir(path: str | os.PathLike, what: str = "output path") -> Path:
    """Raise ``ValueError`` when ``path`` (or a folder above it) exists but is not a directory."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                break
            if candidate == path:
                raise ValueError(f"{what} {path} is a file, not a directory; choose another --out")
            raise ValueError(f"{what} {path} lies under {candidate}, which is a file, not a directory; "
                             "choose another --out")
    return path


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run directory was trained with (``config.yaml``, else its last checkpoint), or ``None``."""
    path = run_dir / "config.yaml"
    if path.is_file():
        try:
            saved = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            saved = None
        if isinstance(saved, dict):
            return saved
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        try:
            return dict(load_checkpoint(last)["hyper_parameters"]["config"])
        except (KeyError, TypeError, ValueError, OSError):
            return None
    return None


def check_same_settings(run_dir: Path, config: TrainConfig, action: str) -> None:
    """Raise ``ValueError`` unless the run in ``run_dir`` was made with ``config`` (up to the keys of
    :data:`~detlosses.training.config.RUN_ONLY_KEYS`); ``action`` says what was about to happen."""
    saved = _saved_config(run_dir)
    if saved is None:
        raise ValueError(f"cannot {action} {run_dir}: it has no readable config.yaml or checkpoint to show which data "
                         "and settings it was trained with; delete it or choose another --out")
    differences = config_differences(saved, config)
    if differences:
        listed = "\n  ".join(differences)
        raise ValueError(f"cannot {action} {run_dir}: it was trained with other data or settings:\n  {listed}\n"
                         "Delete it, choose another --out, or ask for the same settings.")


def _final_metrics(trainer: pl.Trainer, module: DetectionModule, datamodule: DetectionDataModule,
                   tracker: ValidationTracker) -> None:
    """Leave the final model's metrics in ``module.last_metrics``: those of the last validation of ``fit``
    when it saw the final weights, else a fresh validation that is not logged (the training log keeps
    one point per validated epoch)."""
    if tracker.last_step == trainer.global_step and module.last_metrics is not None:
        return
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        trainer.loggers = loggers


PLAIN_HEAD_MIN_CHANNELS = 128


def narrow_plain_head_warning(config: TrainConfig) -> str | None:
    """A warning for the published plain dense head (``head_norm='none'``, std-0.01 initialisation) made
    narrow: measured in docs/results.md, at ``fpn_channels=64`` it passed almost no signal in 208
    iterations on BCCD — every loss, focal included, ended at 0 AP (with GroupNorm: 31-38 AP)."""
    if config.model not in ("retinanet", "fcos") or config.head_norm != "none":
        return None
    if config.fpn_channels >= PLAIN_HEAD_MIN_CHANNELS:
        return None
    return (f"head_norm='none' (the published plain head) with fpn_channels={config.fpn_channels}: at 64 channels "
            "it learned nothing in 208 iterations on BCCD for any loss, focal included (docs/results.md); use "
            "head_norm='group' for narrow heads or short schedules")


def train(config: TrainConfig, *, resume: bool = False, resume_or_start: bool = False,
          callbacks: Sequence[pl.Callback] = ()) -> RunResult:
    """Train ``config``, evaluate the final model on the validation data, write the report.

    Args:
        config: the run (``config.out`` is its directory).
        resume: continue the run in ``config.out`` from its last checkpoint; it must exist and have been
            trained with the same data and settings.
        resume_or_start: resume when ``config.out`` holds a run, else start a new one.
        callbacks: extra Lightning callbacks for the training run (after the pipeline's own).

    Raises:
        FileExistsError: ``config.out`` holds a run and neither ``resume`` nor ``resume_or_start`` is set.
        FileNotFoundError: ``resume`` without a run to resume (and without ``resume_or_start``).
        ValueError: the run to resume was trained with other settings; bad data or config.
    """
    run_dir = check_output_dir(config.out)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not (resume or resume_or_start):
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another --out")
    if resume and not resume_or_start and not last.exists():
        raise FileNotFoundError(
            f"--resume: {run_dir} holds no run to resume ({last} does not exist). Drop --resume to start a new "
            "run there, or pass --resume-or-start to resume when there is a run and start one otherwise."
        )
    if last.exists():
        check_same_settings(run_dir, config, "resume")
    primary = launched_rank() == 0
    if resume_or_start and not last.exists() and primary:
        LOG.info("--resume-or-start: %s holds no run to resume; starting a new run there", run_dir)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = DetectionDataModule(config)
    datamodule.setup("fit")
    module = DetectionModule(config.to_dict(), datamodule.classes)
    module.run_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    keep_best = datamodule.val_has_boxes
    if not keep_best and primary:
        LOG.warning("the validation data (%s) has no ground-truth box: AP and LRP are undefined there (reported as "
                    "n/a) and no best.ckpt is kept; training goes on", config.validation_source())
    narrow_plain = narrow_plain_head_warning(config)
    if narrow_plain and primary:
        LOG.warning(narrow_plain)
    timer = IterationTimer()
    tracker = ValidationTracker()
    ckpt_path = str(last) if last.exists() else None
    earlier_log = _read_csv_rows(run_dir / "metrics.csv") if ckpt_path else []
    resumed_at = (0, 0)
    if ckpt_path:
        saved = load_checkpoint(last)
        resumed_at = (int(saved.get("epoch", 0)), int(saved.get("global_step", 0)))
    trainer = _trainer(config, run_dir, for_fit=True, extra_callbacks=[tracker, *callbacks], timer=timer,
                       keep_best=keep_best)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.is_global_zero and earlier_log:
        _merge_csv_log(run_dir / "metrics.csv", earlier_log, *resumed_at)
    _final_metrics(trainer, module, datamodule, tracker)
    metrics = dict(module.last_metrics or {})
    metrics["seconds_per_iteration"] = timer.seconds_per_iteration
    metrics["timing"] = timer.summary()
    metrics["loss"] = config.loss
    metrics["diverged"] = bool(module.diverged)
    metrics["run"] = {**config.run_settings(), "iterations": int(trainer.global_step), "torch": torch.__version__}
    report = None
    if trainer.is_global_zero:
        report = _write_outputs(run_dir, metrics, module.last_details, f"{config.loss} — {config.model}")
    return RunResult(run_dir, metrics, report, is_primary=trainer.is_global_zero)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    accelerator: str = "auto",
    allow_train_as_val: bool = False,
) -> RunResult:
    """Evaluate a checkpoint.

    The data evaluated: ``data`` at ``split`` (default: the run's ``val_split``) when ``data`` is given;
    else the run's test data (``test_data``, or its ``data`` at ``test_split``) for ``split="test"``;
    else the run's ``data`` at ``split`` for another split name; else the run's own validation data
    (``val_data``, its ``val_fraction`` hold-out from ``data_split.json``, or ``data`` at ``val_split``).

    Raises:
        ValueError: when the evaluation images are training images of the run (unless
            ``allow_train_as_val``), or the checkpoint or data is unusable.
    """
    checkpoint = Path(checkpoint)
    saved = load_checkpoint(checkpoint)
    try:
        hparams = saved["hyper_parameters"]
        values = dict(hparams["config"])
        classes = list(hparams["classes"])
    except (KeyError, TypeError):
        raise ValueError(f"{checkpoint} is not a detlosses training checkpoint") from None
    values.update(pretrained_backbone=False, devices=1, strategy="auto", accelerator=accelerator)
    run_dir = checkpoint.parent.parent
    own_validation = data is None and split is None
    if data is not None:
        values["val_data"] = data
        if split is not None:
            values["val_split"] = split
    elif split == "test":
        values["val_data"] = values.get("test_data") or values.get("data")
        values["val_split"] = values.get("test_split", "test")
    elif split is not None:
        values["val_split"] = split
    if own_validation and values.get("val_fraction") is not None:
        split_file = run_dir / DATA_SPLIT_JSON
        if not split_file.is_file():
            raise ValueError(f"the run held {values['val_fraction']:g} of its training images out for validation, "
                             f"but its split file {split_file} is missing; name the data with --data")
        values["search_split"] = str(split_file)
    elif not own_validation:
        values["search_split"] = None
    values["val_fraction"] = None
    if batch_size is not None:
        values["batch_size"] = batch_size
    if allow_train_as_val:
        values["allow_train_as_val"] = True
    out_dir = check_output_dir(Path(out) if out is not None else run_dir / "eval")
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
    metrics["run"] = {"checkpoint": str(checkpoint), "data": config.validation_source(),
                      "loss": config.loss, "model": config.model, "backbone": config.backbone}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _write_outputs(out_dir, metrics, module.last_details, f"evaluation of {checkpoint.name}")
    return RunResult(out_dir, metrics, report)


def compare(
    base: TrainConfig, losses: list[str], seeds: list[int], out: str | os.PathLike,
    recipes: str | os.PathLike | None = None,
) -> tuple[Path | None, list[dict[str, Any]]]:
    """Train every loss with every seed (same detector, data, schedule); write ``comparison.md``.

    With ``recipes`` (a directory of :mod:`~detlosses.training.recipes` files), each loss trains with its
    paper's recipe ``<recipes>/<model>_<loss>.yaml`` (learning rate per image, anchors, box coder,
    assignment, ...) on the same data and budget; the comparison lists each loss's recipe.

    A finished run in ``out`` (with ``metrics.json``) is reused and an unfinished one resumed only when it
    was trained with the same data and settings (its saved config matches); otherwise nothing is trained and
    a ``ValueError`` lists the differences. ``comparison.md`` records the data and settings. Under data
    parallelism only global rank 0 writes the comparison; the other ranks get ``None`` as its path.
    """
    out = check_output_dir(out)
    primary = launched_rank() == 0
    chosen = {loss: recipe_for(recipes, base.model, loss) for loss in losses} if recipes is not None else {}
    planned = []
    for loss in losses:
        for seed in seeds:
            run_dir = out / f"{loss}-seed{seed}"
            config = dataclasses.replace(base, loss=loss, seed=seed, out=str(run_dir),
                                         loss_options=base.loss_options if loss == base.loss else {})
            if loss in chosen:
                config = apply_recipe(config, chosen[loss])
            if (run_dir / "metrics.json").exists() or (run_dir / "checkpoints" / "last.ckpt").exists():
                check_same_settings(run_dir, config, "reuse")  # before any training: fail fast
            planned.append((loss, seed, run_dir, config))
    runs = []
    for loss, seed, run_dir, config in planned:
        metrics_file = run_dir / "metrics.json"
        if metrics_file.exists():
            if primary:
                LOG.info("compare: %s seed %d already finished with the same settings, reusing %s", loss, seed,
                         run_dir)
            metrics = json.loads(metrics_file.read_text())
        else:
            unfinished = (run_dir / "checkpoints" / "last.ckpt").exists()
            if primary:
                LOG.info("compare: %s %s seed %d in %s", "resuming" if unfinished else "training", loss, seed,
                         run_dir)
            result = train(config, resume=unfinished)
            primary = primary and result.is_primary
            metrics = result.metrics
        runs.append({"loss": loss, "seed": seed, "metrics": metrics, "run_dir": str(run_dir)})
    if not primary:
        return None, runs
    from ..reporting import write_comparison

    settings = {key: value for key, value in base.run_settings().items() if key not in ("loss", "seed")}
    if chosen:
        settings.pop("lr", None)  # each loss's own, in its recipe
        settings["recipes"] = {loss: recipe.describe(base.batch_size, base.devices) for loss, recipe in chosen.items()}
    return write_comparison(out, runs, settings=settings), runs
