"""DetectionDataset: sample format, image conversion, records, subsets and COCO export."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from detlosses.data import (
    DatasetError,
    DetectionDataset,
    ImageRecord,
    category_id_to_label,
    label_to_category_id,
)


def _record(
    path: Path, image_id: int, boxes: list[list[float]], labels: list[int], size=(40, 30)
) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        file_name=path.name,
        width=size[0],
        height=size[1],
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        path=path,
    )


@pytest.fixture
def small_dataset(tmp_path: Path, image_writer) -> DetectionDataset:
    records = [
        _record(image_writer(tmp_path / "a.png", 40, 30), 7, [[1, 2, 11, 22], [5, 5, 40, 30]], [0, 2]),
        _record(image_writer(tmp_path / "b.jpg", 40, 30, mode="L"), 8, [], []),
        _record(image_writer(tmp_path / "c.png", 40, 30, mode="RGBA"), 9, [[0, 0, 4, 4]], [1]),
    ]
    return DetectionDataset(records, ["cat", "dog", "bird"])


def test_sample_format(small_dataset: DetectionDataset) -> None:
    image, target = small_dataset[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert boxes.canvas_size == (30, 40)
    assert boxes.dtype == torch.float32
    assert torch.equal(boxes.as_subclass(torch.Tensor), torch.tensor([[1.0, 2, 11, 22], [5, 5, 40, 30]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [0, 2]
    assert target["image_id"] == 7
    assert target["orig_size"] == (30, 40)


@pytest.mark.parametrize("index", [1, 2], ids=["grayscale", "rgba"])
def test_non_rgb_images_are_converted_to_rgb(small_dataset: DetectionDataset, index: int) -> None:
    image, _ = small_dataset[index]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8


def test_image_without_boxes_has_empty_tensors_of_the_right_shape(small_dataset: DetectionDataset) -> None:
    _, target = small_dataset[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_getitem_does_not_alias_the_records(small_dataset: DetectionDataset) -> None:
    _, target = small_dataset[0]
    target["boxes"].zero_()
    assert small_dataset.record(0).boxes.sum() > 0


def test_record_info_and_counts(small_dataset: DetectionDataset) -> None:
    assert len(small_dataset) == 3
    assert small_dataset.num_classes == 3
    assert small_dataset.num_boxes == 3
    assert small_dataset.image_info(1) == {"id": 8, "file_name": "b.jpg", "width": 40, "height": 30}
    assert small_dataset.record(2).labels.tolist() == [1]


def test_subset_keeps_classes_and_order(small_dataset: DetectionDataset) -> None:
    part = small_dataset.subset([2, 0])
    assert isinstance(part, DetectionDataset)
    assert part.classes == small_dataset.classes
    assert [part.image_info(i)["id"] for i in range(len(part))] == [9, 7]
    assert len(small_dataset) == 3
    with pytest.raises(IndexError):
        small_dataset.subset([3])


def test_with_transform_returns_a_transformed_copy(small_dataset: DetectionDataset) -> None:
    def mark(image, target):
        return image, {**target, "marked": True}

    marked = small_dataset.with_transform(mark)
    assert marked[0][1]["marked"] is True
    assert "marked" not in small_dataset[0][1]


def test_to_coco_round_trip(small_dataset: DetectionDataset) -> None:
    coco = small_dataset.to_coco()
    assert [image["id"] for image in coco["images"]] == [7, 8, 9]
    assert coco["categories"] == [
        {"id": 1, "name": "cat"},
        {"id": 2, "name": "dog"},
        {"id": 3, "name": "bird"},
    ]
    annotations = coco["annotations"]
    assert [a["id"] for a in annotations] == [1, 2, 3]
    assert [a["image_id"] for a in annotations] == [7, 7, 9]
    assert [a["bbox"] for a in annotations] == [[1, 2, 10, 20], [5, 5, 35, 25], [0, 0, 4, 4]]
    assert [a["area"] for a in annotations] == [200, 875, 16]
    assert all(a["iscrowd"] == 0 for a in annotations)
    for annotation in annotations:
        record = next(
            small_dataset.record(i)
            for i in range(3)
            if small_dataset.record(i).image_id == annotation["image_id"]
        )
        x, y, w, h = annotation["bbox"]
        label = category_id_to_label(annotation["category_id"])
        matches = (record.boxes == torch.tensor([x, y, x + w, y + h])).all(dim=1) & (record.labels == label)
        assert matches.any()


def test_label_category_conversion() -> None:
    assert label_to_category_id(0) == 1
    assert category_id_to_label(1) == 0
    assert all(category_id_to_label(label_to_category_id(label)) == label for label in range(100))
    with pytest.raises(ValueError):
        label_to_category_id(-1)
    with pytest.raises(ValueError):
        category_id_to_label(0)


def test_size_mismatch_between_annotation_and_image_names_the_file(tmp_path: Path, image_writer) -> None:
    path = image_writer(tmp_path / "wrong.png", 20, 10)
    dataset = DetectionDataset([_record(path, 1, [], [], size=(40, 30))], ["a"])
    with pytest.raises(DatasetError, match="wrong.png"):
        dataset[0]


def test_missing_image_file_names_the_file(tmp_path: Path) -> None:
    dataset = DetectionDataset([_record(tmp_path / "gone.png", 1, [], [])], ["a"])
    with pytest.raises(DatasetError, match="gone.png"):
        dataset[0]


def test_corrupt_image_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"not an image at all")
    dataset = DetectionDataset([_record(path, 1, [], [])], ["a"])
    with pytest.raises(DatasetError, match="corrupt.jpg"):
        dataset[0]


def test_bmp_images_are_read(tmp_path: Path, image_writer) -> None:
    dataset = DetectionDataset([_record(image_writer(tmp_path / "x.bmp", 40, 30), 1, [], [])], ["a"])
    image, _ = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8


def test_invalid_construction_is_rejected(tmp_path: Path) -> None:
    record = _record(tmp_path / "a.png", 1, [[0, 0, 1, 1]], [3])
    with pytest.raises(ValueError, match="labels must lie"):
        DetectionDataset([record], ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        DetectionDataset([], ["a", "a"])
    with pytest.raises(ValueError, match="at least one class"):
        DetectionDataset([], [])
    twin = _record(tmp_path / "b.png", 1, [], [])
    with pytest.raises(ValueError, match="image ids"):
        DetectionDataset([_record(tmp_path / "a.png", 1, [], []), twin], ["a"])
    with pytest.raises(ValueError, match="float32"):
        ImageRecord(
            1, "a.png", 4, 4, torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
        )


def test_dataset_survives_pickling_for_worker_processes(small_dataset: DetectionDataset) -> None:
    restored = pickle.loads(pickle.dumps(small_dataset.subset(torch.tensor([2, 0]))))
    assert torch.equal(restored[1][0], small_dataset[0][0])
    assert restored.classes == small_dataset.classes
