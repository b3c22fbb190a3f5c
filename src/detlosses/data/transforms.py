"""Training / evaluation transforms (torchvision ``transforms.v2``) and batching for detection samples.

Output of :func:`build_transforms` for a sample ``(image, target)`` of a
:class:`~detlosses.data.dataset.DetectionDataset`:

* ``image``: ``float32`` :class:`tv_tensors.Image` ``[3, image_size, image_size]`` scaled to ``[0, 1]``
  (not normalised: torchvision detectors normalise internally);
* ``target["boxes"]``: XYXY :class:`tv_tensors.BoundingBoxes` in pixels of the resized image
  (``canvas_size = (image_size, image_size)``), ``target["labels"]`` filtered alongside;
* ``target["image_id"]`` and ``target["orig_size"]`` (stored ``(H, W)``) unchanged.

Images are resized to a fixed square (aspect ratio not kept), so every batch has one shape.  For the
evaluation transform (resize only), :func:`rescale_boxes` maps predicted boxes back to the original image
with ``rescale_boxes(boxes, image.shape[-2:], target["orig_size"])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

#: Fill colour of the zoom-out canvas (ImageNet mean in 8-bit RGB).
ZOOM_OUT_FILL: tuple[int, int, int] = (124, 116, 104)


class RandomIoUCropIfBoxes(v2.RandomIoUCrop):
    """:class:`v2.RandomIoUCrop` that leaves images without boxes untouched.

    The stock transform can only pick its "no crop" option when no box can satisfy the IoU constraint,
    which it finds out after dozens of wasted trials per image; for pure negatives we skip it directly.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = [item for item in flat_inputs if isinstance(item, tv_tensors.BoundingBoxes)]
        if not boxes or boxes[0].shape[0] == 0:
            return {}
        return super().make_params(flat_inputs)


def build_transforms(train: bool, image_size: int, ssd_crop: bool = False) -> v2.Compose:
    """Transforms applied as ``transform(image, target)`` to samples of a detection data set.

    Args:
        train: training augmentation (random horizontal flip, optional SSD crop) or evaluation (resize).
        image_size: side of the square output images in pixels.
        ssd_crop: with ``train``, first apply SSD-style augmentation: ``RandomZoomOut`` (p = 0.5, up to
            4x, filled with :data:`ZOOM_OUT_FILL`), ``RandomIoUCrop`` (skipped for images without boxes)
            and ``SanitizeBoundingBoxes`` to drop the boxes the crop removed.

    Returns:
        A :class:`v2.Compose` ending with ``Resize((image_size, image_size))`` and
        ``ToDtype(float32, scale=True)``; images with zero boxes pass through unchanged in structure.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    steps: list[v2.Transform] = []
    if train:
        if ssd_crop:
            steps += [
                v2.RandomZoomOut(
                    fill={tv_tensors.Image: ZOOM_OUT_FILL, "others": 0}, side_range=(1.0, 4.0), p=0.5
                ),
                RandomIoUCropIfBoxes(),
                v2.SanitizeBoundingBoxes(),
            ]
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    return v2.Compose(steps)


def collate_detection(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Collate ``(image, target)`` samples into ``(images, targets)`` lists, as torchvision detectors want."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def rescale_boxes(boxes: Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """Map XYXY boxes from an image of size ``from_size`` ``(H, W)`` to one of size ``to_size`` ``(H, W)``.

    Used to bring predictions on a resized image back to the original image: ``from_size`` is the network
    input size, ``to_size`` is ``target["orig_size"]``.  Valid when the only geometric transform was a
    resize (the evaluation transform).  The result is clipped to the destination image.
    """
    from_height, from_width = (int(v) for v in from_size)
    to_height, to_width = (int(v) for v in to_size)
    scale = boxes.new_tensor([to_width / from_width, to_height / from_height] * 2)
    rescaled = boxes.as_subclass(Tensor) * scale
    limits = boxes.new_tensor([to_width, to_height] * 2)
    return torch.minimum(rescaled.clamp(min=0), limits)
