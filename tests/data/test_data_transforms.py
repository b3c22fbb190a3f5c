"""build_transforms / collate_detection / rescale_boxes: geometry stays consistent, empty images work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from detlosses.data import (
    DetectionDataset,
    ImageRecord,
    SyntheticShapes,
    build_transforms,
    collate_detection,
    rescale_boxes,
)

BOX = [20.0, 10.0, 50.0, 30.0]  # a white rectangle on a black 80 x 40 image


@pytest.fixture
def white_box_dataset(tmp_path: Path) -> DetectionDataset:
    image = Image.new("RGB", (80, 40))
    image.paste((255, 255, 255), (20, 10, 50, 30))
    image.save(tmp_path / "box.png")
    Image.new("RGB", (80, 40), (30, 30, 30)).save(tmp_path / "empty.png")
    records = [
        ImageRecord(1, "box.png", 80, 40, torch.tensor([BOX]), torch.tensor([0]), path=tmp_path / "box.png"),
        ImageRecord(
            2,
            "empty.png",
            80,
            40,
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.int64),
            tmp_path / "empty.png",
        ),
    ]
    return DetectionDataset(records, ["box"])


def _box_agrees_with_white_pixels(image: torch.Tensor, box: list[float]) -> bool:
    """The white rectangle fills ``box`` and (almost) no white pixel lies outside it."""
    x0, y0, x1, y1 = (round(v) for v in box)
    gray = image.mean(dim=0)
    inside = gray[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    outside = torch.ones_like(gray, dtype=torch.bool)
    outside[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
    stray_white = int((gray[outside] > 0.7).sum())
    return float(inside.mean()) > 0.9 and stray_white <= 0.05 * (x1 - x0) * (y1 - y0)


def test_eval_transform_resizes_image_and_boxes(white_box_dataset: DetectionDataset) -> None:
    image, target = white_box_dataset.with_transform(build_transforms(train=False, image_size=64))[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].canvas_size == (64, 64)
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor), torch.tensor([[16.0, 16.0, 40.0, 48.0]])
    )
    assert target["image_id"] == 1 and target["orig_size"] == (40, 80)


def test_rescale_boxes_maps_back_to_the_original_image(white_box_dataset: DetectionDataset) -> None:
    image, target = white_box_dataset.with_transform(build_transforms(train=False, image_size=64))[0]
    back = rescale_boxes(target["boxes"], image.shape[-2:], target["orig_size"])
    assert type(back) is torch.Tensor
    torch.testing.assert_close(back, torch.tensor([BOX]))
    clipped = rescale_boxes(torch.tensor([[-3.0, 0.0, 70.0, 64.0]]), (64, 64), (40, 80))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 80.0, 40.0]]))


@pytest.mark.parametrize("ssd_crop", [False, True])
def test_train_transform_keeps_boxes_on_the_object(
    white_box_dataset: DetectionDataset, ssd_crop: bool
) -> None:
    torch.manual_seed(0)
    dataset = white_box_dataset.with_transform(build_transforms(train=True, image_size=64, ssd_crop=ssd_crop))
    flipped = kept = 0
    for _ in range(40):
        image, target = dataset[0]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        boxes = target["boxes"]
        assert boxes.shape[0] == target["labels"].shape[0] <= 1
        if boxes.shape[0] == 0:
            continue
        kept += 1
        box = boxes[0].tolist()
        assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 64
        if box[2] - box[0] > 4 and box[3] - box[1] > 4:
            assert _box_agrees_with_white_pixels(image, box)
        if not ssd_crop:
            flipped += box == pytest.approx([24.0, 16.0, 48.0, 48.0])
            assert box in (pytest.approx([16.0, 16.0, 40.0, 48.0]), pytest.approx([24.0, 16.0, 48.0, 48.0]))
    assert kept > 20
    if not ssd_crop:
        assert 5 < flipped < 35


@pytest.mark.parametrize(("train", "ssd_crop"), [(False, False), (True, False), (True, True)])
def test_transforms_work_on_images_without_boxes(
    white_box_dataset: DetectionDataset, train: bool, ssd_crop: bool
) -> None:
    dataset = white_box_dataset.with_transform(
        build_transforms(train=train, image_size=32, ssd_crop=ssd_crop)
    )
    for _ in range(10):
        image, target = dataset[1]
        assert image.shape == (3, 32, 32)
        assert target["boxes"].shape == (0, 4) and target["boxes"].canvas_size == (32, 32)
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_ssd_crop_on_synthetic_shapes_keeps_labels_aligned() -> None:
    torch.manual_seed(1)
    dataset = SyntheticShapes(
        16, seed=2, transform=build_transforms(train=True, image_size=96, ssd_crop=True)
    )
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, 96, 96)
        boxes = target["boxes"]
        assert boxes.shape[0] == target["labels"].shape[0]
        assert ((boxes >= 0) & (boxes <= 96)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_collate_detection_returns_lists(white_box_dataset: DetectionDataset) -> None:
    dataset = white_box_dataset.with_transform(build_transforms(train=False, image_size=32))
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert [t["image_id"] for t in targets] == [1, 2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert len(images) == 2 and images[0].shape == (3, 32, 32)
    assert targets[1]["boxes"].shape == (0, 4)


def test_image_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        build_transforms(train=False, image_size=0)
