"""Published training recipes: each paper's own settings for its loss and detector, as config files.

A recipe (``configs/recipes/<model>_<loss>.yaml``) holds what a paper changed for its loss besides the
loss itself — learning rate per image, anchors per octave and aspect ratios, box coder weights,
assignment (IoU or ATSS), head normalisation, loss options — and, for the record, what it trained
with (``published``: batch, schedule, image size, source). Applying a recipe to a run keeps the run's
data and budget (epochs, batch size, image size) and sets::

    lr = lr_per_image * batch_size * devices

plus every key of ``settings``. ``detlosses compare --recipes configs/recipes`` applies to each loss
its own recipe, so every loss trains as its paper trained it, on the same data and budget.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig

__all__ = ["BUDGET_KEYS", "Recipe", "apply_recipe", "load_recipe", "recipe_for"]

BUDGET_KEYS = frozenset({"data", "train_split", "val_data", "val_split", "val_fraction", "split_seed", "test_data",
                         "test_split", "allow_train_as_val", "search_split", "epochs", "max_steps", "batch_size",
                         "image_size", "seed", "precision", "accelerator", "devices", "strategy", "num_workers",
                         "out", "limit_train_batches", "limit_val_batches", "val_every", "log_every", "progress_bar",
                         "backbone", "pretrained_backbone", "lr", "loss", "model"})
"""Keys a recipe may not set: the data, the budget and the run's own plumbing stay the comparison's."""


@dataclass(frozen=True)
class Recipe:
    """One loss's published settings (see the module docstring)."""

    path: Path
    loss: str
    model: str
    lr_per_image: float
    settings: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)

    def describe(self, batch_size: int, devices: int = 1) -> str:
        """One line: the file, the learning rate it gives and its settings."""
        lr = self.lr_per_image * batch_size * devices
        parts = [f"{self.path.name}: lr {lr:g} ({self.lr_per_image:g} per image)"]
        parts += [f"{key} {value}" for key, value in self.settings.items()]
        return ", ".join(parts)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file; ``ValueError`` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path} must be a mapping with loss, model, lr_per_image and settings")
    unknown = sorted(set(raw) - {"loss", "model", "lr_per_image", "settings", "published"})
    missing = sorted({"loss", "model", "lr_per_image"} - set(raw))
    if unknown or missing:
        raise ValueError(f"recipe {path}: " + "; ".join(
            ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])))
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"recipe {path}: settings must be a mapping of config keys")
    known = {item.name for item in dataclasses.fields(TrainConfig)}
    bad = sorted(set(settings) - known)
    if bad:
        raise ValueError(f"recipe {path}: unknown config keys {bad}")
    budget = sorted(set(settings) & BUDGET_KEYS)
    if budget:
        raise ValueError(f"recipe {path}: {budget} belong to the run (data and budget), not to a recipe")
    try:
        lr_per_image = float(raw["lr_per_image"])
    except (TypeError, ValueError):
        raise ValueError(f"recipe {path}: lr_per_image must be a number, got {raw['lr_per_image']!r}") from None
    if not lr_per_image > 0:
        raise ValueError(f"recipe {path}: lr_per_image must be > 0, got {lr_per_image}")
    return Recipe(path=path, loss=str(raw["loss"]), model=str(raw["model"]), lr_per_image=lr_per_image,
                  settings=dict(settings), published=dict(raw.get("published") or {}))


def apply_recipe(config: TrainConfig, recipe: Recipe) -> TrainConfig:
    """``config`` with the recipe's learning rate (per image x global batch) and settings."""
    if recipe.loss != config.loss or recipe.model != config.model:
        raise ValueError(f"recipe {recipe.path} is for loss {recipe.loss!r} on {recipe.model!r}, but the run trains "
                         f"{config.loss!r} on {config.model!r}")
    lr = recipe.lr_per_image * config.batch_size * config.devices
    values = {**config.to_dict(), **recipe.settings, "lr": lr}
    return TrainConfig.from_dict(values)


def recipe_for(directory: str | os.PathLike, model: str, loss: str) -> Recipe:
    """The recipe ``<directory>/<model>_<loss>.yaml``; ``ValueError`` lists the recipes there when it is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"recipes directory {directory} does not exist")
    path = directory / f"{model}_{loss}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ValueError(f"no recipe for loss {loss!r} on {model!r} in {directory} (expected {path.name}); "
                         f"recipes there: {', '.join(available) or 'none'}")
    return load_recipe(path)
