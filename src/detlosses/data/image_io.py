"""Reading image files with Pillow: full RGB decode for training, header-only size for indexing.

Pillow is used rather than ``torchvision.io`` (whose decoders are deprecated since torchvision 0.29).
Images are used as stored: EXIF orientation tags are ignored both when decoding and when reading the
size, so the pixels, the sizes and the annotation coordinates always refer to the same (stored) frame.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor

from .errors import DatasetError

#: File name suffixes recognised as images when a folder of images is listed (lower case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def read_rgb_image(path: str | Path) -> Tensor:
    """Decode an image file to a contiguous ``uint8`` tensor of shape ``[3, H, W]``.

    Grayscale, palette and RGBA images are converted to RGB (alpha dropped) by ``Image.convert("RGB")``.

    Raises:
        DatasetError: when the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"{path}: cannot decode image ({error})") from error
    return pil_to_tensor(rgb).contiguous()


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header without decoding the pixels.

    Raises:
        DatasetError: when the file is missing or is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"{path}: not a readable image ({error})") from error
