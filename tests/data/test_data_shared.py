"""The real data sets in ../shared: BCCD (Pascal VOC) and coco128 (YOLO).

Facts checked here (see the data sets' READMEs):

* BCCD: 205 / 87 / 72 train / val / test images, 3 classes, 4,888 boxes in all; two boxes are
  zero-size points (``BloodImage_00338.xml`` in val and ``BloodImage_00343.xml`` in train, both RBC with
  ``xmin == xmax`` and ``ymin == ymax``) and are dropped with a warning.
* coco128: 128 images per split, 80 classes.  val has 898 boxes as its README says; train has 929, not
  941: two label files (``000000000656.txt``, ``000000000659.txt``, 12 boxes) have no image, and two
  images (``000000000250.jpg``, ``000000000508.jpg``) have no label file (pure negatives).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from detlosses.data import DroppedBoxesWarning, build_transforms, parse_data_spec, read_voc, read_yolo

pytestmark = pytest.mark.shared


@pytest.mark.parametrize(
    ("split", "images", "boxes", "dropped_from"),
    [
        ("train", 205, 2804, "BloodImage_00343.xml"),
        ("val", 87, 1137, "BloodImage_00338.xml"),
        ("test", 72, 945, None),
    ],
)
def test_bccd_splits(bccd_root: Path, split: str, images: int, boxes: int, dropped_from: str | None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = read_voc(bccd_root, split)
    dropped = [w for w in caught if issubclass(w.category, DroppedBoxesWarning)]
    if dropped_from is None:
        assert not dropped
    else:
        assert len(dropped) == 1
        message = str(dropped[0].message)
        assert "dropped 1 invalid box" in message and "1 with zero or negative width/height" in message
        assert dropped_from in message
    assert len(dataset) == images
    assert dataset.classes == ["Platelets", "RBC", "WBC"]
    assert dataset.num_boxes == boxes
    for index in range(len(dataset)):
        record = dataset.record(index)
        assert (record.width, record.height) == (640, 480)
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all()


def test_bccd_all_boxes_accounted_for(bccd_root: Path) -> None:
    with pytest.warns(DroppedBoxesWarning, match="dropped 2 invalid box"):
        total = sum(read_voc(bccd_root, split).num_boxes for split in ("trainval", "test"))
    assert total == 4888 - 2


def test_bccd_sample_through_the_training_transform(bccd_root: Path) -> None:
    with pytest.warns(DroppedBoxesWarning):
        dataset = parse_data_spec(f"voc:{bccd_root}", "val")
    image, target = dataset[0]
    assert image.shape == (3, 480, 640) and image.dtype == torch.uint8
    image, target = dataset.with_transform(build_transforms(train=True, image_size=256, ssd_crop=True))[0]
    assert image.shape == (3, 256, 256)
    assert target["boxes"].shape[0] == target["labels"].shape[0]
    coco = dataset.to_coco()
    assert len(coco["images"]) == 87 and len(coco["annotations"]) == 1137
    assert [c["name"] for c in coco["categories"]] == ["Platelets", "RBC", "WBC"]


@pytest.mark.parametrize(
    ("split", "boxes", "negatives", "classes_present"), [("train", 929, 2, 71), ("val", 898, 0, 73)]
)
def test_coco128_splits(
    coco128_yaml: Path, split: str, boxes: int, negatives: int, classes_present: int
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedBoxesWarning)
        dataset = read_yolo(coco128_yaml, split)
    assert len(dataset) == 128
    assert dataset.num_classes == 80
    assert dataset.classes[0] == "person" and dataset.classes[79] == "toothbrush"
    assert dataset.num_boxes == boxes
    records = [dataset.record(i) for i in range(len(dataset))]
    assert sum(record.labels.numel() == 0 for record in records) == negatives
    assert len(set(torch.cat([record.labels for record in records]).tolist())) == classes_present
    assert records[0].image_id == (9 if split == "train" else 139)  # COCO ids from the file names


@pytest.mark.parametrize(("split", "file_name"), [("train", "000000000086.jpg"), ("val", "000000007888.jpg")])
def test_coco128_grayscale_images_come_out_rgb(coco128_yaml: Path, split: str, file_name: str) -> None:
    dataset = read_yolo(coco128_yaml, split)
    index = next(i for i in range(len(dataset)) if dataset.record(i).file_name == file_name)
    image, target = dataset[index]
    assert image.shape == (3, dataset.record(index).height, dataset.record(index).width)
    assert image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert target["boxes"].shape[0] > 0
