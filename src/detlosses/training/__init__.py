"""Training with PyTorch Lightning (the ``[train]`` extra): config, data module, module, runs.

The names are imported on first use (PEP 562), so reading a config (``detlosses.training.config``, used
by ``detlosses --help``) does not import Lightning or the detectors.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "apply_overrides": "config",
    "load_config": "config",
    "save_config": "config",
    "DetectionDataModule": "datamodule",
    "EpochSeededSampler": "datamodule",
    "DetectionModule": "module",
    "RunResult": "runner",
    "compare": "runner",
    "evaluate_checkpoint": "runner",
    "quiet_lightning": "runner",
    "train": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
