"""Lightning DataModule: data specs, transforms and reproducible, resumable sampling.

The order of the training images and every random augmentation are functions of
``(seed, epoch, image)`` only: the sampler draws its permutation from ``seed + epoch`` and each
sample's transforms run under a seed derived from ``(seed, epoch, index)``. A run resumed from an
epoch checkpoint therefore sees exactly the batches the uninterrupted run would have seen. Under
data-parallel training each rank takes its own share of that permutation.

The validation images must not be training images: :meth:`DetectionDataModule.setup` refuses (a
``ValueError`` naming the data and the ways out) when they share images, unless the config sets
``allow_train_as_val``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .._atomic import atomic_write_json
from ..data import (
    DatasetError,
    DetectionDataset,
    build_transforms,
    collate_detection,
    holdout_split,
    parse_data_spec,
    shared_images,
)
from .config import TrainConfig

__all__ = ["DATA_SPLIT_JSON", "DetectionDataModule", "EpochSeededSampler", "SeededAugmentation", "write_split_file"]

LOG = logging.getLogger("detlosses")

DATA_SPLIT_JSON = "data_split.json"
"""The hold-out split of a ``val_fraction`` run, in its run directory."""


def write_split_file(dataset: DetectionDataset | None, data: str, split: str, fraction: float, seed: int,
                     path: str | os.PathLike) -> Path:
    """Write (once) a seeded hold-out split of ``dataset`` (``data`` at ``split``) to ``path``.

    The file holds ``data``, ``split``, ``seed``, ``val_fraction``, ``train_ids`` and ``val_ids``; an
    existing file is kept when it was made from the same data, split, fraction and seed (``dataset`` is
    only read when the file is made, and may be ``None`` when it exists).

    Raises:
        ValueError: when ``path`` holds a split made otherwise, or the data set is too small to divide.
    """
    path = Path(path)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            made = (saved["data"], saved["split"], float(saved["val_fraction"]), int(saved["seed"]))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} is not a readable split file; delete it to make a new one") from None
        if made != (data, split, float(fraction), int(seed)):
            raise ValueError(f"{path} holds a split of {made[0]} (split {made[1]!r}, fraction {made[2]:g}, seed "
                             f"{made[3]}), not of {data} (split {split!r}, fraction {fraction:g}, seed {seed}); "
                             "choose another --out or delete the file")
        return path
    if dataset is None:
        raise ValueError(f"{path} does not exist and no data set was given to divide")
    train_ids, val_ids = holdout_split(dataset, fraction, seed)
    return atomic_write_json({"data": data, "split": split, "seed": int(seed), "val_fraction": float(fraction),
                              "train_ids": train_ids, "val_ids": val_ids}, path)

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
    """Train/val data sets from the config's data specs with the pipeline's transforms.

    Args:
        config: the run's config (``data``, ``val_data``, ``val_fraction``, ``search_split``, ...).
        check_training_overlap: refuse validation data that shares images with the training data
            (unless ``config.allow_train_as_val``); evaluation of a checkpoint on other data
            skips the check when the training data cannot be read.
    """

    def __init__(self, config: TrainConfig, *, check_training_overlap: bool = True) -> None:
        super().__init__()
        self.config = config
        self.check_training_overlap = check_training_overlap
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self._val_coco: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None and (self.train_set is not None or stage not in (None, "fit")):
            return
        cfg = self.config
        split_file = self._split_file()
        if split_file is not None:
            train, val = self._divide(parse_data_spec(cfg.data, cfg.train_split), split_file)
        else:
            val = parse_data_spec(cfg.val_data or cfg.data, cfg.val_split)
            train = self._training_data(required=stage in (None, "fit"))
            if train is not None:
                if list(train.classes) != list(val.classes):
                    raise ValueError(
                        f"the validation data {cfg.validation_source()} has the classes {val.classes}, the training "
                        f"data {cfg.data} has {train.classes}: they must be the same list"
                    )
                if self.check_training_overlap and not cfg.allow_train_as_val:
                    self._refuse_shared_images(train, val)
        if train is not None:
            self.train_set = train.with_transform(build_transforms(True, cfg.image_size, ssd_crop=cfg.ssd_crop))
        self.val_set = val.with_transform(build_transforms(False, cfg.image_size))

    def _training_data(self, required: bool) -> DetectionDataset | None:
        cfg = self.config
        if required or self.check_training_overlap:
            try:
                return parse_data_spec(cfg.data, cfg.train_split)
            except DatasetError as err:
                if required:
                    raise
                LOG.warning("could not read the training data %s to check that the evaluation images are not "
                            "training images: %s", cfg.data, err)
        return None

    def _split_file(self) -> Path | None:
        """The file dividing the training data in two (``search_split``, or the ``val_fraction`` hold-out
        written to ``<out>/data_split.json`` on first use), or ``None``."""
        cfg = self.config
        if cfg.search_split is not None:
            return Path(cfg.search_split)
        if cfg.val_fraction is None:
            return None
        path = Path(cfg.out) / DATA_SPLIT_JSON
        base = None if path.exists() else parse_data_spec(cfg.data, cfg.train_split)
        return write_split_file(base, cfg.data, cfg.train_split, cfg.val_fraction, cfg.split_seed, path)

    def _divide(self, base: DetectionDataset, split_file: Path) -> tuple[DetectionDataset, DetectionDataset]:
        try:
            split = json.loads(split_file.read_text())
            train_ids, val_ids = list(split["train_ids"]), list(split["val_ids"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{split_file} is not a split file with train_ids and val_ids") from None
        position = {base.record(i).image_id: i for i in range(len(base))}
        try:
            train_idx = [position[i] for i in train_ids]
            val_idx = [position[i] for i in val_ids]
        except KeyError as err:
            raise ValueError(f"split file {split_file} names image id {err} that {self.config.data} lacks") from None
        return base.subset(train_idx), base.subset(val_idx)

    def _refuse_shared_images(self, train: DetectionDataset, val: DetectionDataset) -> None:
        cfg = self.config
        shared = shared_images(train, val)
        if not shared:
            return
        if shared == len(val) == len(train):
            what = f"the validation images are the training images (the same {shared})"
        else:
            what = f"{shared} of the {len(val)} validation images are also training images"
        hint = ""
        if (cfg.val_data or cfg.data).startswith("coco:") and cfg.val_data is None:
            hint = " A coco spec is one annotation file: every split of it is the same images."
        elif cfg.val_data is None and (cfg.data.startswith("voc:") or cfg.data.startswith("yolo:")) and \
                cfg.data.count(":") >= 2:
            hint = f" {cfg.data} names its split, so training and validation both read it."
        elif cfg.val_data is None and cfg.data.startswith("voc:"):
            hint = " A VOC folder without ImageSets/Main is one split of all its images."
        raise ValueError(
            f"{what}: training on {cfg.data} (split {cfg.train_split!r}), validating on {cfg.validation_source()}; "
            f"every metric and best.ckpt would be measured on images the detector was trained on.{hint} "
            "Name separate validation data with --val-data SPEC (config key val_data, e.g. "
            "coco:<val.json>:<images> or voc:<root>:val), hold a share of the training images out with "
            "--val-fraction 0.2 (config key val_fraction), or pass --allow-train-as-val (allow_train_as_val: "
            "true) to measure on training images on purpose."
        )

    @property
    def val_has_boxes(self) -> bool:
        """Whether the validation data holds any ground-truth box (AP and LRP are undefined otherwise)."""
        if self.val_set is None:
            self.setup("validate")
        return self.val_set.num_boxes > 0

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
