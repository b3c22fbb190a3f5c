"""Clipping and filtering of annotated boxes while a data set is read.

Rule applied by every reader: boxes partially outside the image are clipped to it; boxes with zero or
negative width/height, and boxes entirely outside the image (which clipping makes degenerate), are
dropped.  The drops of one whole data set read are reported in a single :class:`DroppedBoxesWarning`
that gives the counts and names the annotation files involved.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from .errors import DatasetError, DroppedBoxesWarning

_MAX_FILES_NAMED = 10


class BoxSanitizer:
    """Clips and filters the boxes of each image of one data set read, then reports the drops once.

    Args:
        source: what is being read (a path or a short description), quoted in the warning.
    """

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.num_degenerate = 0
        self.num_outside = 0
        self.files: list[str] = []

    @property
    def num_dropped(self) -> int:
        """Number of boxes dropped so far."""
        return self.num_degenerate + self.num_outside

    def __call__(
        self, boxes: Tensor, labels: Tensor, *, width: int, height: int, file: str | Path
    ) -> tuple[Tensor, Tensor]:
        """Clip ``boxes`` (float XYXY ``[N, 4]``) to a ``width`` x ``height`` image, drop invalid ones.

        Args:
            boxes: absolute-pixel XYXY boxes of one image.
            labels: their labels, shape ``[N]``; filtered alongside the boxes.
            width: image width in pixels.
            height: image height in pixels.
            file: the annotation file the boxes come from, named in errors and in the warning.

        Returns:
            The kept boxes (float32, clipped) and their labels.

        Raises:
            DatasetError: when a coordinate is NaN or infinite.
        """
        boxes = boxes.to(torch.float32).reshape(-1, 4)
        if not torch.isfinite(boxes).all():
            raise DatasetError(f"{file}: box coordinates must be finite numbers, got {boxes.tolist()}")
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        clipped = torch.stack(
            (
                boxes[:, 0].clamp(0, width),
                boxes[:, 1].clamp(0, height),
                boxes[:, 2].clamp(0, width),
                boxes[:, 3].clamp(0, height),
            ),
            dim=1,
        )
        empty_after_clip = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        outside = empty_after_clip & ~degenerate
        keep = ~(degenerate | outside)
        if not bool(keep.all()):
            self.num_degenerate += int(degenerate.sum())
            self.num_outside += int(outside.sum())
            self.files.append(str(file))
        return clipped[keep], labels[keep]

    def report(self) -> None:
        """Issue one :class:`DroppedBoxesWarning` for the whole read if any box was dropped."""
        if self.num_dropped == 0:
            return
        named = ", ".join(self.files[:_MAX_FILES_NAMED])
        if len(self.files) > _MAX_FILES_NAMED:
            named += f", ... ({len(self.files) - _MAX_FILES_NAMED} more)"
        warnings.warn(
            f"{self.source}: dropped {self.num_dropped} invalid box(es) "
            f"({self.num_degenerate} with zero or negative width/height, "
            f"{self.num_outside} entirely outside the image) in {len(self.files)} file(s): {named}",
            DroppedBoxesWarning,
            stacklevel=3,
        )
