"""Lightning DataModule: data specs, transforms and reproducible, resumable sampling.

The order of the training images and every random augmentation are functions of
``(seed, epoch, image)`` only: the sampler draws its permutation from ``seed + epoch`` and each
sample's transforms run under a seed derived from ``(seed, epoch, index)``. A run resumed from an
epoch checkpoint therefore sees exactly the batches the uninterrupted run would have seen. Under
data-parallel training each rank takes its own share of that permutation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import DetectionDataset, build_transforms, collate_detection, parse_data_spec
from .config import TrainConfig

__all__ = ["DetectionDataModule", "EpochSeededSampler", "SeededAugmentation"]

_MIX = 0x9E3779B97F4A7C15


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)``: a ``seed + epoch`` permutation, sharded over ranks."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = -(-size // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order = (order * (total // max(len(order), 1) + 1))[:total]  # pad like DistributedSampler
        for index in order[self.rank:total:self.world_size]:
            yield index, (self.seed * _MIX + self.epoch * 1_000_003 + index) % (2**63 - 1)


class SeededAugmentation(Dataset):
    """Runs ``dataset[index]`` (and its random transforms) under the seed the sampler gives."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | int):
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        return self.dataset[item]


class DetectionDataModule(pl.LightningDataModule):
    """Train/val data sets from ``config.data`` with the pipeline's transforms."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self._val_coco: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if cfg.search_split is not None:
            self._setup_search_split()
            return
        if self.val_set is None:
            self.val_set = parse_data_spec(cfg.data, cfg.val_split).with_transform(
                build_transforms(False, cfg.image_size)
            )
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = parse_data_spec(cfg.data, cfg.train_split).with_transform(
                build_transforms(True, cfg.image_size, ssd_crop=cfg.ssd_crop)
            )

    def _setup_search_split(self) -> None:
        if self.train_set is not None and self.val_set is not None:
            return
        cfg = self.config
        split = json.loads(Path(cfg.search_split).read_text())
        base = parse_data_spec(cfg.data, cfg.train_split)
        position = {base.record(i).image_id: i for i in range(len(base))}
        try:
            train_idx = [position[i] for i in split["train_ids"]]
            val_idx = [position[i] for i in split["val_ids"]]
        except KeyError as err:
            raise ValueError(f"search split {cfg.search_split} names image id {err} that {cfg.data} lacks") from None
        self.train_set = base.subset(train_idx).with_transform(
            build_transforms(True, cfg.image_size, ssd_crop=cfg.ssd_crop)
        )
        self.val_set = base.subset(val_idx).with_transform(build_transforms(False, cfg.image_size))

    @property
    def classes(self) -> list[str]:
        dataset = self.train_set or self.val_set
        if dataset is None:
            self.setup("validate")
            dataset = self.val_set
        return list(dataset.classes)

    @property
    def val_coco(self) -> dict[str, Any]:
        """COCO ground truth of the validation split (original image coordinates)."""
        if self._val_coco is None:
            if self.val_set is None:
                self.setup("validate")
            self._val_coco = self.val_set.to_coco()
        return self._val_coco

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        sampler = EpochSeededSampler(len(self.train_set), self.config.seed, True, rank, world)
        return DataLoader(
            SeededAugmentation(self.train_set), batch_size=self.config.batch_size, sampler=sampler,
            collate_fn=collate_detection, num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        sampler = EpochSeededSampler(len(self.val_set), self.config.seed, False, rank, world)
        return DataLoader(
            SeededAugmentation(self.val_set), batch_size=self.config.batch_size, sampler=sampler,
            collate_fn=collate_detection, num_workers=self.config.num_workers,
        )
