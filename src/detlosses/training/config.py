"""Training configuration: one dataclass, YAML files and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._atomic import atomic_write_text

__all__ = [
    "RUN_ONLY_KEYS",
    "TrainConfig",
    "apply_overrides",
    "config_differences",
    "config_keys_help",
    "load_config",
    "save_config",
]

PRECISIONS = ("32", "16-mixed", "bf16-mixed", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

RUN_ONLY_KEYS = frozenset({"out", "progress_bar", "num_workers", "log_every"})
"""Keys that change where and how verbosely a run reports, never its numbers: ignored when a saved run's
config is compared with the one asked for (``--resume``, ``compare``)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``config.yaml`` in the run directory).

    Data: ``data`` is the training data spec (``synthetic``, ``coco:<ann.json>:<images>``,
    ``voc:<root>``, ``yolo:<data.yaml>``) read at ``train_split``. The validation data is
    ``val_data`` (a spec of its own, read at ``val_split``; default: ``data`` at ``val_split``), or a
    seeded hold-out of ``val_fraction`` of the training images (``split_seed``; the split is written to
    ``<out>/data_split.json``), or ``search_split`` (a JSON file with ``train_ids`` and ``val_ids``
    dividing ``train_split`` in two: the search's proxy task). ``test_data`` / ``test_split`` name the
    test data for ``detlosses eval --split test`` (default: ``data`` at ``test_split``). A run refuses
    to start when its validation images are training images unless ``allow_train_as_val`` is set.
    ``max_steps`` ends training after that many iterations (a search budget);
    ``abort_on_divergence`` stops a run whose loss is NaN or stuck at 1.0 (the search's rule).
    Schedule: SGD with linear warm-up over ``warmup_iters`` iterations from
    ``lr * warmup_ratio``, then ``lr`` divided by 10 at each epoch in ``lr_steps`` (default: at
    75 % and 90 % of the epochs), gradient-norm clipping at ``gradient_clip``.
    """

    data: str = "synthetic"
    train_split: str = "train"
    val_data: str | None = None
    val_split: str = "val"
    val_fraction: float | None = None
    split_seed: int = 0
    test_data: str | None = None
    test_split: str = "test"
    allow_train_as_val: bool = False
    search_split: str | None = None
    model: str = "retinanet"
    backbone: str = "mobilenet_v2"
    pretrained_backbone: bool = False
    trainable_layers: int | None = None
    anchor_scale: float = 4.0
    fpn_channels: int = 256
    head_norm: str = "group"
    anchors_per_octave: int = 3
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    box_coder_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    assigner: str = "iou"
    atss_top_k: int = 9
    model_options: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None  # None: the model's default (focal; ce for faster_rcnn and ssd; set for deformable_detr)
    loss_options: dict[str, Any] = field(default_factory=dict)
    pap_params: str | None = None
    epochs: int = 12
    max_steps: int | None = None
    batch_size: int = 8
    image_size: int = 128
    ssd_crop: bool = False
    lr: float = 0.01
    optimizer: str = "sgd"
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
        """Check (and normalise) every value; raises ``ValueError`` naming the key, value and what it must be."""
        from ..models import BACKBONES, MODELS  # here, so reading a config stays light
        from ..models.model_losses import check_model_loss, default_loss

        hints = _field_types()
        for item in dataclasses.fields(self):
            setattr(self, item.name, _coerce(item.name, getattr(self, item.name), hints[item.name]))
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.loss is None:
            self.loss = default_loss(self.model)
        check_model_loss(self.model, self.loss)
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.model == "deformable_detr":
            from ..models.deformable_detr import DeformableDetrOptions

            DeformableDetrOptions.from_mapping(self.model_options)
        elif self.model_options:
            raise ValueError(f"model_options apply to deformable_detr only, got {self.model_options!r} "
                             f"for model {self.model}")
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.precision = str(self.precision)
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}")
        self._check_ranges()
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.val_fraction is not None and self.val_data is not None:
            raise ValueError(f"val_fraction={self.val_fraction} holds validation images out of the training data, "
                             f"but val_data={self.val_data!r} names other validation data: choose one")
        if self.val_fraction is not None and self.search_split is not None:
            raise ValueError("val_fraction and search_split both divide the training data: choose one")
        if self.search_split is not None:
            _check_input_file("search_split", self.search_split)
        if self.pap_params is not None:
            _check_input_file("pap_params", self.pap_params)
        if not isinstance(self.loss_options, dict):
            raise ValueError(f"loss_options must be a mapping, got {self.loss_options!r}")
        self.detector_config(num_classes=1)  # the detector's own checks (anchors, assigner, box coder)
        self._check_loss_options()

    def _check_ranges(self) -> None:
        """Numbers outside their meaningful range (NaN included) are refused, naming key and value."""
        for name in ("epochs", "batch_size", "image_size", "devices", "val_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0 (0: no warm-up), got {self.warmup_iters}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio (the warm-up's starting share of lr) must lie in [0, 1], "
                             f"got {self.warmup_ratio}")
        if self.gradient_clip is not None and not (self.gradient_clip >= 0 and math.isfinite(self.gradient_clip)):
            raise ValueError(f"gradient_clip must be a finite number >= 0 or null (no clipping), "
                             f"got {self.gradient_clip}")
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ValueError(f"score_thresh must lie in [0, 1], got {self.score_thresh}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.lr_steps is not None and any(step < 1 for step in self.lr_steps):
            raise ValueError(f"lr_steps must be epochs >= 1, got {self.lr_steps}")
        for name in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, name)
            if value is None:
                continue
            if value == 0:
                what = ("validation, but every run ends with its evaluation on the validation data (AP, LRP, "
                        "report)" if name == "limit_val_batches" else "training")
                raise ValueError(f"{name}=0 turns off {what}; leave {name} unset (all batches) or give a "
                                 "number of batches >= 1 or a fraction in (0, 1]")
            if (isinstance(value, int) and value < 1) or (isinstance(value, float) and not 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be a number of batches >= 1 or a fraction in (0, 1], got {value}")

    def _check_loss_options(self) -> None:
        """Build the run's criterion once, so bad ``loss_options`` are refused before any data is read,
        with the offending key named (``loss_options.delta``)."""
        from ..models import build_model_criterion

        options = self.criterion_options()
        try:
            build_model_criterion(self.model, self.loss, **options)
        except (ValueError, TypeError) as err:
            keys = _bad_option_keys(self.model, self.loss, options)
            if len(keys) == 1:
                key, value = keys[0]
                if key == "params_file" and self.pap_params is not None:
                    raise ValueError(f"pap_params file {value}: {err}") from None
                raise ValueError(f"loss_options.{key}={value!r} is not valid for loss {self.loss!r}: {err}") from None
            raise ValueError(f"loss_options {self.loss_options!r} are not valid for loss {self.loss!r}: "
                             f"{err}") from None

    def detector_config(self, num_classes: int):
        """The :class:`~detlosses.models.DetectorConfig` of this run."""
        from ..models import DetectorConfig

        return DetectorConfig(
            model=self.model, backbone=self.backbone, num_classes=num_classes, image_size=self.image_size,
            pretrained_backbone=self.pretrained_backbone, trainable_layers=self.trainable_layers,
            anchor_scale=self.anchor_scale, fpn_channels=self.fpn_channels, head_norm=self.head_norm,
            anchors_per_octave=self.anchors_per_octave, anchor_ratios=tuple(self.anchor_ratios),
            box_coder_weights=tuple(self.box_coder_weights), assigner=self.assigner, atss_top_k=self.atss_top_k,
            score_thresh=self.score_thresh, model_options=self.model_options or None,
        )

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

    def validation_source(self) -> str:
        """Where the validation images come from, in words (for reports and messages)."""
        if self.search_split is not None:
            return f"{self.data} (split {self.train_split!r}), the val_ids of {self.search_split}"
        if self.val_fraction is not None:
            return (f"{self.val_fraction:g} of {self.data} (split {self.train_split!r}) held out, "
                    f"split seed {self.split_seed}")
        return f"{self.val_data or self.data} (split {self.val_split!r})"

    def run_settings(self) -> dict[str, Any]:
        """The settings a report shows: data, detector, schedule, then every other key that differs from
        its default (``--set`` / config-file overrides included); ``out`` and display keys left out."""
        settings: dict[str, Any] = {
            "data": f"{self.data} (split {self.train_split!r})" if self.search_split is None and
            self.val_fraction is None else self.data,
            "validation data": self.validation_source(),
        }
        for key in ("model", "backbone", "loss", "epochs", "batch_size", "image_size", "lr", "seed", "precision",
                    "devices", "pretrained_backbone"):
            settings[key] = getattr(self, key)
        shown = {"data", "train_split", "val_data", "val_split", "val_fraction", "split_seed", "search_split",
                 *settings, *RUN_ONLY_KEYS}
        defaults = TrainConfig.defaults()
        for key, value in self.to_dict().items():
            if key not in shown and value != defaults[key]:
                settings[key] = value
        return settings

    @staticmethod
    def defaults() -> dict[str, Any]:
        """Every key's default value."""
        values = {}
        for item in dataclasses.fields(TrainConfig):
            values[item.name] = item.default_factory() if item.default is dataclasses.MISSING else item.default
        return values

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
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"config file {path} is a directory, expected a YAML file") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {path} is not a text (YAML) file") from None
        except OSError as err:
            raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from None
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
    """Write ``config`` as YAML (atomically); returns the path."""
    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_differences(saved: dict[str, Any], wanted: TrainConfig, ignore=RUN_ONLY_KEYS) -> list[str]:
    """``key: saved -> wanted`` for every setting in which a saved run's config (a ``config.yaml``
    mapping; keys it lacks take their defaults) differs from ``wanted``; ``ignore``d keys are skipped."""
    full = {**TrainConfig.defaults(), **saved}
    target = wanted.to_dict()
    differences = []
    for key in sorted(set(full) | set(target)):
        if key in ignore:
            continue
        old, new = full.get(key, "<absent>"), target.get(key, "<absent>")
        if key == "precision":
            old, new = str(old), str(new)
        if old != new:
            differences.append(f"{key}: {old!r} (saved) vs {new!r} (now)")
    return differences


# ----------------------------------------------------------------------------------------- value types


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


_LONG_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
_SHORT_WORDS = {bool: "bool", int: "int", float: "float", str: "str", dict: "mapping"}


def _describe(hint: Any, short: bool = False) -> str:
    """A type in words: ``an integer or null`` for messages, or (``short``) ``int|null`` for ``--help``."""
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return ("|" if short else " or ").join(_describe(arg, short) for arg in typing.get_args(hint))
    if origin is list:
        item = _describe(typing.get_args(hint)[0], short)
        return f"list of {item}" if short else f"a list of {item.removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        hint = dict
    return (_SHORT_WORDS if short else _LONG_WORDS).get(hint, str(hint))


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as ``hint``; raises ``TypeError`` when it is not one."""
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if type(value) in typing.get_args(hint):  # an exact match first: 1.0 stays a float in int | float
            return value
        if isinstance(value, float) and float in typing.get_args(hint):  # numpy floats too
            return float(value)
        for arg in typing.get_args(hint):
            try:
                return _convert(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError
        (item,) = typing.get_args(hint)
        return [_convert(v, item) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if isinstance(value, bool):  # YAML's true/false are not numbers or names
        raise TypeError
    if hint is int:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise TypeError
    if hint is float:
        if isinstance(value, int | float):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):  # e.g. precision: 32 or out: 2024 read as numbers by YAML
            return str(value)
        raise TypeError
    raise TypeError


def _coerce(name: str, value: Any, hint: Any) -> Any:
    try:
        return _convert(value, hint)
    except TypeError:
        raise ValueError(
            f"config key {name!r} must be {_describe(hint)}, got {value!r} ({type(value).__name__})"
        ) from None


def config_keys_help() -> str:
    """One line per config key: its type and default (for ``--help``)."""
    hints = _field_types()
    return "\n".join(f"{key} ({_describe(hints[key], short=True)}) = {default!r}"
                     for key, default in TrainConfig.defaults().items())


def _check_input_file(key: str, value: str) -> None:
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{key} {value} is a directory, expected a file")
    if not path.is_file():
        raise ValueError(f"{key} file {value} does not exist")


def _bad_option_keys(model: str, loss: str, options: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ``(dotted key, value)`` of each loss option the criterion refuses on its own (a nested
    mapping, e.g. Faster R-CNN's ``rpn``, is searched key by key)."""
    from ..models import build_model_criterion

    def refused(trial: dict[str, Any]) -> bool:
        try:
            build_model_criterion(model, loss, **trial)
        except (ValueError, TypeError):
            return True
        return False

    bad = []
    for key, value in options.items():
        if not refused({key: value}):
            continue
        if isinstance(value, dict) and value:
            inner = [(f"{key}.{sub}", sub_value) for sub, sub_value in value.items()
                     if refused({key: {sub: sub_value}})]
            bad.extend(inner or [(key, value)])
        else:
            bad.append((key, value))
    return bad
