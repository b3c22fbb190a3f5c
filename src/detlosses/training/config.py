"""Training configuration: one dataclass, YAML files and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._atomic import atomic_write_text
from ..models import BACKBONES, LOSS_NAMES, MODELS

__all__ = ["TrainConfig", "load_config", "apply_overrides", "save_config"]

PRECISIONS = ("32", "16-mixed", "bf16-mixed", "64")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``config.yaml`` in the run directory).

    Data: ``data`` is a spec (``synthetic``, ``coco:<ann.json>:<images>``, ``voc:<root>``,
    ``yolo:<data.yaml>``); ``train_split`` / ``val_split`` choose the splits, or ``search_split``
    (a JSON file with ``train_ids`` and ``val_ids``) divides ``train_split`` in two (the search's
    proxy task). ``max_steps`` ends training after that many iterations (a search budget);
    ``abort_on_divergence`` stops a run whose loss is NaN or stuck at 1.0 (the search's rule).
    Schedule: SGD with linear warm-up over ``warmup_iters`` iterations from
    ``lr * warmup_ratio``, then ``lr`` divided by 10 at each epoch in ``lr_steps`` (default: at
    75 % and 90 % of the epochs), gradient-norm clipping at ``gradient_clip``.
    """

    data: str = "synthetic"
    train_split: str = "train"
    val_split: str = "val"
    search_split: str | None = None
    model: str = "retinanet"
    backbone: str = "mobilenet_v2"
    pretrained_backbone: bool = False
    trainable_layers: int | None = None
    anchor_scale: float = 4.0
    fpn_channels: int = 256
    head_norm: str = "group"
    loss: str = "focal"
    loss_options: dict[str, Any] = field(default_factory=dict)
    pap_params: str | None = None
    epochs: int = 12
    max_steps: int | None = None
    batch_size: int = 8
    image_size: int = 128
    ssd_crop: bool = False
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_ratio: float = 0.001
    lr_steps: list[int] | None = None
    gradient_clip: float | None = 35.0
    seed: int = 0
    precision: str = "32"
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    num_workers: int = 0
    out: str = "runs/train"
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    val_every: int = 1
    log_every: int = 10
    progress_bar: bool = True
    score_thresh: float = 0.05
    abort_on_divergence: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.precision = str(self.precision)
        for name in ("epochs", "batch_size", "image_size", "devices", "val_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.search_split is not None and not Path(self.search_split).is_file():
            raise ValueError(f"search_split file {self.search_split} does not exist")
        if self.pap_params is not None and not Path(self.pap_params).is_file():
            raise ValueError(f"pap_params file {self.pap_params} does not exist")
        if not isinstance(self.loss_options, dict):
            raise ValueError(f"loss_options must be a mapping, got {self.loss_options!r}")

    @property
    def milestones(self) -> list[int]:
        if self.lr_steps is not None:
            return sorted(int(s) for s in self.lr_steps)
        return sorted({max(1, int(round(0.75 * self.epochs))), max(1, int(round(0.9 * self.epochs)))})

    def criterion_options(self) -> dict[str, Any]:
        options = dict(self.loss_options)
        if self.loss == "pap" and self.pap_params is not None:
            options["params_file"] = self.pap_params
        return options

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file (if any), then ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys to values")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(values)


def apply_overrides(values: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (values parsed as YAML; ``a.b=v`` sets a nested mapping)."""
    out = dict(values)
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        parts = key.strip().split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {part} is not a mapping")
        target[parts[-1]] = value
    return out


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
