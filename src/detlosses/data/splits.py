"""Which images two data sets share, and seeded hold-out splits of one data set.

Training and validation data must be different images, or every metric is measured on training
images. :func:`shared_images` finds the validation images that are also training images (the same
file on disk, or the same generated synthetic image); :func:`holdout_split` divides one data set
into training and validation images by a seeded permutation (the ``--val-fraction`` option and the
search's proxy task use it).
"""

from __future__ import annotations

import os
from collections.abc import Hashable

import torch

from .dataset import DetectionDataset
from .synthetic import SyntheticShapes

__all__ = ["holdout_split", "image_keys", "shared_images"]


def image_keys(dataset: DetectionDataset) -> list[Hashable | None]:
    """One key per image that is equal for the same image in two data sets.

    Images on disk are keyed by their resolved path; synthetic images by their generator settings and
    index; other generated images (no file) get ``None`` (never equal to anything).
    """
    keys: list[Hashable | None] = []
    synthetic = None
    if isinstance(dataset, SyntheticShapes):
        synthetic = ("synthetic", dataset.seed, dataset.image_size, dataset.max_objects, dataset.empty_fraction,
                     dataset.class_frequencies, tuple(dataset.size_range), dataset.crowd_probability,
                     dataset.max_overlap)
    for index in range(len(dataset)):
        record = dataset.record(index)
        if record.path is not None:
            keys.append(os.path.realpath(record.path))
        elif synthetic is not None:
            keys.append((*synthetic, record.image_id))
        else:
            keys.append(None)
    return keys


def shared_images(train: DetectionDataset, val: DetectionDataset) -> int:
    """How many images of ``val`` are also images of ``train``."""
    known = {key for key in image_keys(train) if key is not None}
    return sum(key is not None and key in known for key in image_keys(val))


def holdout_split(dataset: DetectionDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded division of ``dataset`` into ``(train_ids, val_ids)`` (image ids, each list sorted).

    ``round(fraction * n)`` images (at least one, and at least one left for training) are held out,
    chosen by a ``torch.randperm`` seeded with ``seed``; the same data, fraction and seed always give
    the same split.

    Raises:
        ValueError: when ``fraction`` is not in (0, 1) or the data set has fewer than 2 images.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must lie strictly between 0 and 1, got {fraction}")
    ids = [dataset.record(i).image_id for i in range(len(dataset))]
    if len(ids) < 2:
        raise ValueError(f"a hold-out split needs at least 2 images, the data set has {len(ids)}")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(int(seed))).tolist()
    n_val = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    return sorted(ids[i] for i in order[n_val:]), sorted(ids[i] for i in order[:n_val])
