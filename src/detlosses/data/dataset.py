"""The in-memory detection data set that every reader returns and the training pipeline consumes.

Conventions:

* boxes are ``float32`` XYXY in absolute pixels of the stored image (``0 <= x < width``);
* labels are ``int64`` 0-based contiguous class indices into :attr:`DetectionDataset.classes`;
* in COCO form (:meth:`DetectionDataset.to_coco`) ``category_id = label + 1``
  (see :mod:`detlosses.data.coco_format`);
* an image without boxes is a valid pure negative: its boxes have shape ``[0, 4]`` and labels ``[0]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .coco_format import build_coco_ground_truth
from .errors import DatasetError
from .image_io import read_rgb_image

#: ``(image, target)`` as returned by :meth:`DetectionDataset.__getitem__`.
Sample = tuple[tv_tensors.Image, dict[str, Any]]
#: A transform applied to ``(image, target)``, e.g. :func:`~detlosses.data.transforms.build_transforms`.
SampleTransform = Callable[[tv_tensors.Image, dict[str, Any]], tuple[Any, dict[str, Any]]]


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """Annotation of one image.

    Attributes:
        image_id: integer id, unique within the data set (the COCO ``image_id``).
        file_name: the image's name relative to its images folder (the COCO ``file_name``).
        width: stored image width in pixels.
        height: stored image height in pixels.
        boxes: ``float32`` ``[N, 4]`` XYXY boxes in absolute pixels, inside the image.
        labels: ``int64`` ``[N]`` 0-based class indices.
        path: the image file on disk; ``None`` for generated images.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: Tensor
    labels: Tensor
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self.file_name}: image size must be positive, got {self.width}x{self.height}")
        if self.boxes.dtype != torch.float32 or self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(
                f"{self.file_name}: boxes must be a float32 [N, 4] tensor, "
                f"got {self.boxes.dtype} {list(self.boxes.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.boxes.shape[0],):
            raise ValueError(
                f"{self.file_name}: labels must be an int64 [N] tensor matching {self.boxes.shape[0]} boxes, "
                f"got {self.labels.dtype} {list(self.labels.shape)}"
            )

    def info(self) -> dict[str, Any]:
        """The COCO image entry: ``{"id", "file_name", "width", "height"}``."""
        return {"id": self.image_id, "file_name": self.file_name, "width": self.width, "height": self.height}


class DetectionDataset(Dataset[Sample]):
    """A list of annotated images with a class list and an optional transform.

    ``dataset[i]`` returns ``(image, target)``: ``image`` is a ``uint8`` RGB :class:`tv_tensors.Image`
    ``[3, H, W]`` and ``target`` is::

        {
            "boxes": tv_tensors.BoundingBoxes,  # float32 [N, 4], format XYXY, canvas_size (H, W)
            "labels": Tensor,                   # int64 [N], 0-based class indices
            "image_id": int,
            "orig_size": (H, W),                # stored image size, to map predictions back
        }

    both passed through :attr:`transform` when one is set.

    Args:
        records: the images and their annotations.
        classes: class names indexed by label.
        transform: called as ``transform(image, target)``; ``None`` returns the raw sample.

    Raises:
        ValueError: on an empty or duplicated class list, a label outside ``[0, len(classes))``, or
            duplicated image ids.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        classes: Sequence[str],
        transform: SampleTransform | None = None,
    ) -> None:
        self.classes: list[str] = list(classes)
        if not self.classes:
            raise ValueError("a detection data set needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")
        self._records: list[ImageRecord] = list(records)
        image_ids = [record.image_id for record in self._records]
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("image ids must be unique within a data set")
        for record in self._records:
            if record.labels.numel() and (
                int(record.labels.min()) < 0 or int(record.labels.max()) >= len(self.classes)
            ):
                raise ValueError(
                    f"{record.file_name}: labels must lie in [0, {len(self.classes)}), "
                    f"got {record.labels.tolist()}"
                )
        self.transform = transform

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        record = self._records[index]
        pixels = self.load_image(record)
        if tuple(pixels.shape) != (3, record.height, record.width):
            where = record.path if record.path is not None else record.file_name
            raise DatasetError(
                f"{where}: decoded image has shape {list(pixels.shape)}, but its annotation gives "
                f"{record.width}x{record.height} (width x height)"
            )
        image = tv_tensors.Image(pixels)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                record.boxes.clone(),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(record.height, record.width),
            ),
            "labels": record.labels.clone(),
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
        }
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def load_image(self, record: ImageRecord) -> Tensor:
        """Pixels of one image as a ``uint8`` ``[3, H, W]`` tensor, decoded from ``record.path``."""
        if record.path is None:
            raise DatasetError(f"{record.file_name}: record has no image file to read")
        return read_rgb_image(record.path)

    @property
    def num_classes(self) -> int:
        """Number of classes (labels run from 0 to ``num_classes - 1``)."""
        return len(self.classes)

    @property
    def num_boxes(self) -> int:
        """Total number of boxes over all images."""
        return sum(record.labels.numel() for record in self._records)

    def record(self, index: int) -> ImageRecord:
        """The annotation record of image ``index`` (untransformed, original coordinates)."""
        return self._records[index]

    def image_info(self, index: int) -> dict[str, Any]:
        """COCO image entry of image ``index``: ``{"id", "file_name", "width", "height"}``."""
        return self._records[index].info()

    def subset(self, indices: Sequence[int] | Tensor) -> Self:
        """A data set of the images at ``indices`` (in that order), with the same classes and transform.

        Raises:
            IndexError: when an index is out of range.
        """
        positions = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        for position in positions:
            if not -len(self) <= position < len(self):
                raise IndexError(f"subset index {position} out of range for {len(self)} images")
        chosen = copy.copy(self)
        chosen._records = [self._records[position] for position in positions]
        return chosen

    def with_transform(self, transform: SampleTransform | None) -> Self:
        """A shallow copy of this data set (same images) that applies ``transform``."""
        changed = copy.copy(self)
        changed.transform = transform
        return changed

    def to_coco(self) -> dict[str, Any]:
        """COCO ground truth of the data set in ORIGINAL image coordinates (what the evaluator consumes).

        ``images`` carry ``id``/``file_name``/``width``/``height``; ``annotations`` carry ``bbox``
        ``[x, y, w, h]``, ``area``, ``iscrowd = 0`` and ids numbered from 1; ``categories`` are
        ``{"id": label + 1, "name": classes[label]}``.
        """
        return build_coco_ground_truth(
            ((record.info(), record.boxes, record.labels) for record in self._records), self.classes
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={len(self)}, boxes={self.num_boxes}, "
            f"classes={self.num_classes}, transform={self.transform!r})"
        )
