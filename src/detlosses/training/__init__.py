"""Training with PyTorch Lightning (the ``[train]`` extra): config, data module, module, runs."""

from .config import TrainConfig, apply_overrides, load_config, save_config
from .datamodule import DetectionDataModule, EpochSeededSampler
from .module import DetectionModule
from .runner import RunResult, compare, evaluate_checkpoint, quiet_lightning, train

__all__ = [
    "DetectionDataModule",
    "DetectionModule",
    "EpochSeededSampler",
    "RunResult",
    "TrainConfig",
    "apply_overrides",
    "compare",
    "evaluate_checkpoint",
    "load_config",
    "quiet_lightning",
    "save_config",
    "train",
]
