"""LightningModule: a torchvision detector trained with a detlosses criterion, evaluated with
COCO AP and LRP at the end of every validation epoch.

A training step reads nothing back from the device: the loss components and the criterion's
extra values (self-balance weights) are logged as tensors, which Lightning reads on the host only
every ``log_every_n_steps`` steps; the check that the loss is finite is accumulated on the device
and read at that same interval (and at the end of every epoch), so a non-finite loss raises
:class:`FloatingPointError` within ``log_every_n_steps`` steps, naming the first step where it
happened. The search's abort rule (``abort_on_divergence``) is the exception: it reads the loss
every step, since it must skip the optimiser step of a diverged loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor

from ..data import label_to_category_id, rescale_boxes
from ..evaluation import evaluate_detections, to_coco_detections
from ..models import build_detector, build_model_criterion
from .callbacks import append_gradient_norms
from .config import TrainConfig

__all__ = ["DetectionModule", "plain_targets"]


def plain_targets(targets: list[dict[str, Any]]) -> list[dict[str, Tensor]]:
    """torchvision detectors want plain tensors (not tv_tensors) for boxes and labels."""
    return [{"boxes": t["boxes"].as_subclass(Tensor).float(), "labels": t["labels"]} for t in targets]


def lr_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: linear warm-up from ``warmup_ratio`` over ``warmup_iters`` iterations,
    times ``0.1`` at each milestone epoch (torch's ``LinearLR`` and ``MultiStepLR``, chained)."""
    milestones = [m * max(steps_per_epoch, 1) for m in config.milestones]
    steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if config.warmup_iters <= 0:
        return steps
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=max(config.warmup_ratio, 1e-12),
                                               end_factor=1.0, total_iters=config.warmup_iters)
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, steps], optimizer=optimizer)


class DetectionModule(pl.LightningModule):
    """Train/validate one detector. ``config`` is a :class:`TrainConfig` dict (saved in checkpoints)."""

    def __init__(self, config: dict[str, Any], classes: list[str]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = TrainConfig.from_dict(config)
        self.classes = list(classes)
        self.criterion = build_model_criterion(self.config.model, self.config.loss, **self.config.criterion_options())
        self.detector = build_detector(
            self.config.detector_config(num_classes=len(self.classes)),
            self.criterion,
        )
        self._detections: list[dict[str, Any]] = []
        self.last_metrics: dict[str, Any] | None = None
        self.last_details = None
        self.val_ground_truth: dict[str, Any] | None = None
        self.run_dir: str | None = None
        self.diverged = False
        self._stuck_iterations = 0
        # first step with a non-finite loss (-1: none yet) and the loss components at that step,
        # kept on the device and read every log_every_n_steps steps
        self._nonfinite_step: Tensor | None = None
        self._nonfinite_components: Tensor | None = None
        self._component_names: tuple[str, ...] = ()
        self._steps_since_check = 0

    # ------------------------------------------------------------------ training
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.detector(images)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.detector(list(images), plain_targets(targets))
        loss = losses["loss"]
        if self.config.abort_on_divergence and self._diverging(loss):
            self.diverged = True
            self.trainer.should_stop = True
            return None  # no optimiser step
        self._watch_finite(losses)
        batch_size = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, prog_bar=name == "loss",
                     batch_size=batch_size, sync_dist=False)
        for name, value in self.criterion.extra_logs().items():
            value = value.detach() if isinstance(value, Tensor) else float(value)  # tensors stay on the device
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    def _diverging(self, loss: Tensor) -> bool:
        """The search's abort rule: a NaN loss, or a loss at 1.0 for more than 50 iterations.

        One host read of the loss per step (the rule skips the optimiser step of a diverged loss).
        """
        value = float(loss.detach())
        if not math.isfinite(value):
            return True
        if abs(value - 1.0) < 1e-6:
            self._stuck_iterations += 1
        return self._stuck_iterations > 50

    def _log_interval(self) -> int:
        try:
            return max(1, int(self.trainer.log_every_n_steps))
        except (RuntimeError, AttributeError, TypeError):  # not attached to a trainer
            return 1

    @torch.no_grad()
    def _watch_finite(self, losses: dict[str, Tensor]) -> None:
        """Remember, on the device, the first step with a non-finite loss; check every log interval."""
        loss = losses["loss"].detach()
        names = tuple(losses)
        components = torch.stack([v.detach().reshape(()).to(device=loss.device, dtype=torch.float64)
                                  for v in losses.values()])
        if self._nonfinite_step is None or self._component_names != names:
            self._nonfinite_step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._nonfinite_components = torch.zeros_like(components)
            self._component_names = names
        first = (~torch.isfinite(loss)) & (self._nonfinite_step < 0)
        self._nonfinite_step = torch.where(first, self.global_step, self._nonfinite_step)
        self._nonfinite_components = torch.where(first, components, self._nonfinite_components)
        self._steps_since_check += 1
        if self._steps_since_check >= self._log_interval():
            self._check_finite()

    def _check_finite(self) -> None:
        """Raise if a non-finite loss was seen since training started (one host read)."""
        self._steps_since_check = 0
        if self._nonfinite_step is None:
            return
        step = int(self._nonfinite_step)
        if step >= 0:
            values = dict(zip(self._component_names, self._nonfinite_components.tolist(), strict=True))
            raise FloatingPointError(
                f"non-finite training loss {values.get('loss')} at step {step} (components: {values})"
            )

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        for name, value in self.criterion.epoch_end().items():
            self.log(f"train/{name}", float(value), on_step=False, on_epoch=True)
        histogram = self.criterion.gradient_norm_histogram()
        if histogram is not None and self.trainer.is_global_zero and self.run_dir is not None:
            edges, counts = histogram
            append_gradient_norms(Path(self.run_dir) / "gradient_norms.json", edges, self.current_epoch, counts)

    def configure_optimizers(self):
        cfg = self.config
        params = [p for p in self.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":  # DETR's optimiser (Deformable DETR: lr 2e-4, weight decay 1e-4)
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            steps_per_epoch = math.ceil(self.trainer.estimated_stepping_batches / self.trainer.max_epochs)
        else:  # a step budget: epochs as the data loader counts them
            steps_per_epoch = len(self.trainer.datamodule.train_dataloader())
        steps_per_epoch = max(1, steps_per_epoch)
        scheduler = lr_schedule(optimizer, steps_per_epoch, cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._detections = []

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        outputs = self.detector(list(images))
        for image, target, output in zip(images, targets, outputs, strict=True):
            boxes = rescale_boxes(output["boxes"].float(), image.shape[-2:], target["orig_size"])
            self._detections.extend(
                to_coco_detections(boxes.cpu(), output["scores"].float().cpu(), output["labels"].cpu(),
                                   int(target["image_id"]), label_to_category_id)
            )

    def on_validation_epoch_end(self) -> None:
        detections = self._gather(self._detections)
        ground_truth = self.val_ground_truth
        if ground_truth is None and self.trainer.datamodule is not None:
            ground_truth = self.trainer.datamodule.val_coco
        if ground_truth is None:
            raise RuntimeError("validation needs the ground truth of the validation set")
        metrics, details = evaluate_detections(ground_truth, detections, return_details=True)
        self.last_metrics, self.last_details = metrics, details
        for key in ("AP", "AP50", "AP75", "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN"):
            value = metrics.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.log(f"val/{key}", float(value), prog_bar=key == "AP", sync_dist=False, rank_zero_only=False)
        self._detections = []

    def _gather(self, detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return detections
        gathered: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, detections)
        # padding of the last shard repeats images: keep each image's detections once
        seen: dict[int, int] = {}
        merged = []
        for rank, part in enumerate(gathered):
            for det in part or []:
                owner = seen.setdefault(det["image_id"], rank)
                if owner == rank:
                    merged.append(det)
        return merged
