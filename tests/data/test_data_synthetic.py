"""SyntheticShapes: determinism, content statistics, API compatibility and speed."""

from __future__ import annotations

import collections
import pickle
import time

import pytest
import torch
from torchvision.ops import box_iou

from detlosses.data import (
    SHAPE_CLASSES,
    DetectionDataset,
    SyntheticShapes,
    build_transforms,
    collate_detection,
)


@pytest.fixture(scope="module")
def shapes() -> SyntheticShapes:
    return SyntheticShapes(300, image_size=128, seed=0)


def test_same_seed_gives_identical_images_and_boxes() -> None:
    first, second = SyntheticShapes(8, seed=3), SyntheticShapes(8, seed=3)
    for index in range(8):
        image_a, target_a = first[index]
        image_b, target_b = second[index]
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a["boxes"], target_b["boxes"])
        assert torch.equal(target_a["labels"], target_b["labels"])


def test_image_depends_only_on_seed_and_index() -> None:
    short, long = SyntheticShapes(3, seed=5), SyntheticShapes(10, seed=5)
    for index in range(3):
        assert torch.equal(short[index][0], long[index][0])


def test_different_seed_gives_different_images() -> None:
    first, second = SyntheticShapes(8, seed=0), SyntheticShapes(8, seed=1)
    assert not any(torch.equal(first[i][0], second[i][0]) for i in range(8))
    assert first.to_coco()["annotations"] != second.to_coco()["annotations"]


def test_sample_format_and_boxes_inside_the_image(shapes: SyntheticShapes) -> None:
    assert isinstance(shapes, DetectionDataset)
    assert shapes.classes == list(SHAPE_CLASSES) and shapes.num_classes == 4
    image, target = shapes[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
    assert target["boxes"].canvas_size == (128, 128)
    for index in range(len(shapes)):
        boxes = shapes.record(index).boxes
        assert (boxes >= 0).all() and (boxes <= 128).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_class_imbalance_sizes_crowding_and_empty_images(shapes: SyntheticShapes) -> None:
    counts = collections.Counter()
    sides, empty, overlapping = [], 0, 0
    for index in range(len(shapes)):
        record = shapes.record(index)
        counts.update(record.labels.tolist())
        sides += (record.boxes[:, 2] - record.boxes[:, 0]).tolist()
        empty += record.labels.numel() == 0
        ious = box_iou(record.boxes, record.boxes).fill_diagonal_(0)
        overlapping += bool((ious > 0).any())
    assert set(counts) == {0, 1, 2, 3}
    assert counts[0] > 4 * counts[3]  # one frequent class, one rare
    assert counts.most_common()[-1][0] == 3
    assert min(sides) < 16 and max(sides) > 48  # small and large objects
    assert 0.03 * len(shapes) < empty < 0.25 * len(shapes)
    assert overlapping > 0.1 * len(shapes)


def test_objects_contrast_with_the_background(shapes: SyntheticShapes) -> None:
    # a circle's box centre lies on the circle, its box corner on the background (unless another object)
    differences = []
    for index in range(60):
        image, target = shapes[index]
        image = image.int()
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            if SHAPE_CLASSES[label] != "circle":
                continue
            x0, y0, x1, y1 = (int(v) for v in box)
            centre = image[:, (y0 + y1) // 2, (x0 + x1) // 2]
            corner = image[:, y0, x0]
            differences.append(int((centre - corner).abs().sum()))
    assert len(differences) > 50
    assert sum(d > 60 for d in differences) > 0.9 * len(differences)


def test_to_coco_and_subset(shapes: SyntheticShapes) -> None:
    coco = shapes.to_coco()
    assert len(coco["images"]) == 300
    assert len(coco["annotations"]) == shapes.num_boxes
    assert {c["name"] for c in coco["categories"]} == set(SHAPE_CLASSES)
    part = shapes.subset([5, 2])
    assert isinstance(part, SyntheticShapes) and part.classes == shapes.classes
    assert torch.equal(part[0][0], shapes[5][0])
    assert part.image_info(1) == shapes.image_info(2)
    assert shapes.image_info(0)["id"] == 1


def test_generation_is_fast() -> None:
    dataset = SyntheticShapes(100, image_size=128, seed=1)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset.load_image(dataset.record(index))
        best = min(best, (time.perf_counter() - start) / len(dataset))
    assert best < 5e-3, f"{best * 1e3:.2f} ms per image"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": -1},
        {"num_images": 1, "image_size": 8},
        {"num_images": 1, "seed": -1},
        {"num_images": 1, "max_objects": 0},
        {"num_images": 1, "empty_fraction": 1.5},
        {"num_images": 1, "class_frequencies": (1, 1)},
        {"num_images": 1, "size_range": (0.5, 0.2)},
    ],
)
def test_invalid_options_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticShapes(**kwargs)


def test_survives_pickling_and_multi_worker_loading() -> None:
    dataset = SyntheticShapes(8, image_size=64, seed=4)
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[3][0], dataset[3][0])
    loader = torch.utils.data.DataLoader(
        dataset.with_transform(build_transforms(train=False, image_size=64)),
        batch_size=4,
        num_workers=2,
        collate_fn=collate_detection,
    )
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [4, 4]
    assert [t["image_id"] for _, targets in batches for t in targets] == list(range(1, 9))
