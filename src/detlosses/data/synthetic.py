"""A seeded synthetic shapes data set, generated on the fly, for fast end-to-end checks of detectors.

Each image shows up to ``max_objects`` filled shapes of 4 classes (circle, square, triangle, cross) with
random colours, on a textured background (gradient, stripes or smooth plaid noise, plus pixel noise).
Object sizes are log-uniform between small and large, some objects are placed next to another one
(crowding, with bounded overlap so every object stays visible), the class frequencies are imbalanced
(circles common, crosses rare) and a fraction of the images contain no object at all.

Everything is a deterministic function of ``(seed, index)``: the layout (boxes, labels, colours,
background) is drawn when the data set is built, the pixels are rendered from it when an image is read.
Nothing is written to disk.  Rendering is vectorised numpy (well under a millisecond at 128 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .dataset import DetectionDataset, ImageRecord, SampleTransform

#: Class names of :class:`SyntheticShapes`, indexed by label.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Default class frequencies: circles dominate, crosses are rare.
DEFAULT_CLASS_FREQUENCIES: tuple[float, ...] = (0.55, 0.25, 0.15, 0.05)

_CIRCLE, _SQUARE, _TRIANGLE, _CROSS = range(4)
_GRADIENT, _STRIPES, _PLAID = range(3)
_LAYOUT_STREAM, _PIXEL_NOISE_STREAM = 0, 1
_MIN_COLOUR_DISTANCE = 0.45  # L1 distance (over RGB in [0, 1]) between an object and the background mean
_TEXTURE_AMPLITUDE = 0.2  # largest per-channel difference between the two background colours
_PIXEL_NOISE_STD = 0.025
_CROSS_ARM = 0.34  # arm thickness of a cross as a fraction of its size
_PLACEMENT_TRIALS = 30


@dataclass(frozen=True)
class _Shape:
    label: int
    x0: float
    y0: float
    size: float
    colour: tuple[float, float, float]
    pointing_down: bool  # triangles only

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


@dataclass(frozen=True)
class _Layout:
    index: int
    background_kind: int
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    angle: float
    period: float
    phase: float
    shapes: tuple[_Shape, ...]


def _max_intersection_over_smaller(box: Sequence[float], others: Sequence[Sequence[float]]) -> float:
    """Largest fraction of the smaller box covered, between ``box`` and each of ``others``."""
    worst = 0.0
    for other in others:
        width = min(box[2], other[2]) - max(box[0], other[0])
        height = min(box[3], other[3]) - max(box[1], other[1])
        if width > 0 and height > 0:
            smaller = min(
                (box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])
            )
            worst = max(worst, width * height / smaller)
    return worst


class SyntheticShapes(DetectionDataset):
    """Seeded synthetic shapes detection data set (same API as :class:`DetectionDataset`).

    Args:
        num_images: number of images.
        image_size: side of the square images in pixels.
        seed: non-negative seed; image ``i`` depends only on ``(seed, i)`` and the options below.
        max_objects: most objects in one image (non-empty images hold 1..max_objects, uniformly).
        empty_fraction: probability that an image has no object.
        class_frequencies: relative frequency of each class of :data:`SHAPE_CLASSES`.
        size_range: smallest and largest object side, as fractions of ``image_size`` (log-uniform).
        crowd_probability: probability that an object is placed right next to an earlier one.
        max_overlap: largest fraction of the smaller of two boxes that may be covered by their
            intersection, so that every object stays visible.
        transform: as for :class:`DetectionDataset`.

    Image ids are ``index + 1``; file names ``synthetic_<index>.png`` (virtual: nothing is on disk).
    """

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        seed: int = 0,
        *,
        max_objects: int = 6,
        empty_fraction: float = 0.1,
        class_frequencies: Sequence[float] = DEFAULT_CLASS_FREQUENCIES,
        size_range: tuple[float, float] = (0.08, 0.45),
        crowd_probability: float = 0.35,
        max_overlap: float = 0.35,
        transform: SampleTransform | None = None,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if not 0.0 <= empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must lie in [0, 1], got {empty_fraction}")
        frequencies = np.asarray(class_frequencies, dtype=np.float64)
        if frequencies.shape != (len(SHAPE_CLASSES),) or (frequencies < 0).any() or frequencies.sum() <= 0:
            raise ValueError(
                f"class_frequencies must be {len(SHAPE_CLASSES)} non-negative numbers with a positive sum, "
                f"got {list(class_frequencies)}"
            )
        if not 0.0 < size_range[0] <= size_range[1] <= 1.0:
            raise ValueError(f"size_range must satisfy 0 < low <= high <= 1, got {size_range}")
        if not 0.0 <= crowd_probability <= 1.0:
            raise ValueError(f"crowd_probability must lie in [0, 1], got {crowd_probability}")
        if not 0.0 <= max_overlap <= 1.0:
            raise ValueError(f"max_overlap must lie in [0, 1], got {max_overlap}")
        self.image_size = image_size
        self.seed = seed
        self.max_objects = max_objects
        self.empty_fraction = empty_fraction
        self.class_frequencies = tuple(float(f) for f in frequencies / frequencies.sum())
        self.size_range = size_range
        self.crowd_probability = crowd_probability
        self.max_overlap = max_overlap
        centres = np.arange(image_size, dtype=np.float32) + 0.5
        self._pixel_x = centres[None, :]
        self._pixel_y = centres[:, None]
        self._layouts = {index + 1: self._draw_layout(index) for index in range(num_images)}
        records = [self._record(layout) for layout in self._layouts.values()]
        super().__init__(records, SHAPE_CLASSES, transform)

    # -------------------------------------------------------------------------------------- layout

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, index, stream]))

    def _draw_layout(self, index: int) -> _Layout:
        rng = self._rng(index, _LAYOUT_STREAM)
        colour_a = tuple(float(c) for c in rng.uniform(0.15, 0.85, size=3))
        colour_b = tuple(float(np.clip(a + rng.uniform(-1, 1) * _TEXTURE_AMPLITUDE, 0, 1)) for a in colour_a)
        background_kind = int(rng.integers(3))
        angle = float(rng.uniform(0, math.pi))
        period = float(rng.uniform(0.08, 0.3) * self.image_size)
        phase = float(rng.uniform(0, 2 * math.pi))
        mean = np.add(colour_a, colour_b) / 2
        num_objects = 0 if rng.random() < self.empty_fraction else int(rng.integers(1, self.max_objects + 1))
        shapes: list[_Shape] = []
        for _ in range(num_objects):
            shape = self._draw_shape(rng, shapes, mean)
            if shape is not None:
                shapes.append(shape)
        return _Layout(index, background_kind, colour_a, colour_b, angle, period, phase, tuple(shapes))

    def _draw_shape(
        self, rng: np.random.Generator, placed: list[_Shape], background: np.ndarray
    ) -> _Shape | None:
        label = int(rng.choice(len(SHAPE_CLASSES), p=self.class_frequencies))
        low, high = (fraction * self.image_size for fraction in self.size_range)
        size = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        colour = rng.uniform(0, 1, size=3)
        while np.abs(colour - background).sum() < _MIN_COLOUR_DISTANCE:
            colour = rng.uniform(0, 1, size=3)
        pointing_down = bool(rng.random() < 0.5)
        crowd = bool(placed) and rng.random() < self.crowd_probability
        free = self.image_size - size
        for _ in range(_PLACEMENT_TRIALS):
            if crowd:
                neighbour = placed[int(rng.integers(len(placed)))]
                reach = (neighbour.size + size) / 2
                x0 = neighbour.x0 + neighbour.size / 2 + rng.uniform(-reach, reach) - size / 2
                y0 = neighbour.y0 + neighbour.size / 2 + rng.uniform(-reach, reach) - size / 2
                if not (0 <= x0 <= free and 0 <= y0 <= free):
                    continue
            else:
                x0, y0 = rng.uniform(0, free, size=2)
            box = (float(x0), float(y0), float(x0) + size, float(y0) + size)
            if _max_intersection_over_smaller(box, [shape.box for shape in placed]) <= self.max_overlap:
                return _Shape(
                    label, float(x0), float(y0), size, tuple(float(c) for c in colour), pointing_down
                )
        return None

    def _record(self, layout: _Layout) -> ImageRecord:
        boxes = torch.tensor([shape.box for shape in layout.shapes], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([shape.label for shape in layout.shapes], dtype=torch.int64)
        return ImageRecord(
            image_id=layout.index + 1,
            file_name=f"synthetic_{layout.index:06d}.png",
            width=self.image_size,
            height=self.image_size,
            boxes=boxes,
            labels=labels,
        )

    # ------------------------------------------------------------------------------------ rendering

    def load_image(self, record: ImageRecord) -> Tensor:
        """Render the image of ``record`` (``uint8`` ``[3, H, W]``) from its seeded layout."""
        layout = self._layouts[record.image_id]
        canvas = self._background(layout)
        for shape in layout.shapes:
            self._paint(canvas, shape)
        noise = self._rng(layout.index, _PIXEL_NOISE_STREAM).standard_normal(canvas.shape, dtype=np.float32)
        canvas += _PIXEL_NOISE_STD * noise
        pixels = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return torch.from_numpy(pixels)

    def _background(self, layout: _Layout) -> np.ndarray:
        x, y = self._pixel_x, self._pixel_y
        colour_a = np.asarray(layout.colour_a, dtype=np.float32)[:, None, None]
        colour_b = np.asarray(layout.colour_b, dtype=np.float32)[:, None, None]
        along = x * math.cos(layout.angle) + y * math.sin(layout.angle)
        if layout.background_kind == _GRADIENT:
            weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
        elif layout.background_kind == _STRIPES:
            weight = 0.5 + 0.5 * np.sin(2 * math.pi * along / layout.period + layout.phase)
        else:
            across = -x * math.sin(layout.angle) + y * math.cos(layout.angle)
            weight = 0.5 + 0.25 * (
                np.sin(2 * math.pi * along / layout.period + layout.phase)
                + np.sin(2 * math.pi * across / (1.7 * layout.period) - layout.phase)
            )
        weight = weight.astype(np.float32)[None]
        return colour_a + (colour_b - colour_a) * weight

    def _paint(self, canvas: np.ndarray, shape: _Shape) -> None:
        """Fill ``shape`` into ``canvas`` (``[3, H, W]`` float), testing pixel centres inside its box only."""
        x0, y0, x1, y1 = shape.box
        cols = slice(int(math.floor(x0)), min(int(math.ceil(x1)), self.image_size))
        rows = slice(int(math.floor(y0)), min(int(math.ceil(y1)), self.image_size))
        u = (self._pixel_x[:, cols] - x0) / shape.size  # position inside the box, in [0, 1]
        v = (self._pixel_y[rows, :] - y0) / shape.size
        if shape.label == _CIRCLE:
            inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
        elif shape.label == _SQUARE:
            inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        elif shape.label == _TRIANGLE:
            depth = 1 - v if shape.pointing_down else v  # 0 at the apex, 1 at the base
            inside = (depth >= 0) & (depth <= 1) & (np.abs(u - 0.5) <= depth / 2)
        else:
            half_arm = _CROSS_ARM / 2
            in_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
            inside = in_box & ((np.abs(u - 0.5) <= half_arm) | (np.abs(v - 0.5) <= half_arm))
        window = canvas[:, rows, cols]
        window[:, inside] = np.asarray(shape.colour, dtype=np.float32)[:, None]

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(images={len(self)}, image_size={self.image_size}, seed={self.seed}, "
            f"boxes={self.num_boxes}, transform={self.transform!r})"
        )
