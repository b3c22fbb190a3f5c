"""read_coco: category remapping, crowd handling, box validation and errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from detlosses.data import DatasetError, DroppedBoxesWarning, read_coco

CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
IMAGES = [
    {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
    {"id": 20, "file_name": "sub/b.png", "width": 32, "height": 32},
    {"id": 30, "file_name": "empty.jpg", "width": 16, "height": 16},
]


def _annotation(image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd}


def test_reads_boxes_and_remaps_categories_in_sorted_id_order(tmp_path: Path, coco_builder) -> None:
    annotations = [
        _annotation(10, 18, [1, 2, 10, 20]),
        _annotation(10, 3, [0, 0, 5, 5]),
        _annotation(20, 7, [4, 4, 8, 8]),
    ]
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES, annotations, CATEGORIES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = read_coco(annotation_json, images_dir)
    assert dataset.classes == ["car", "train", "dog"]
    assert [dataset.image_info(i)["id"] for i in range(3)] == [10, 20, 30]
    first = dataset.record(0)
    assert first.boxes.tolist() == [[1, 2, 11, 22], [0, 0, 5, 5]]
    assert first.labels.tolist() == [2, 0]
    assert dataset.record(1).labels.tolist() == [1]
    assert dataset.record(2).boxes.shape == (0, 4)
    image, target = dataset[1]
    assert image.shape == (3, 32, 32)
    assert target["image_id"] == 20


def test_to_coco_gives_back_the_boxes_with_category_id_label_plus_one(tmp_path: Path, coco_builder) -> None:
    annotations = [_annotation(10, 18, [1.5, 2, 10, 20]), _annotation(20, 3, [4, 4, 8, 8])]
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES, annotations, CATEGORIES)
    coco = read_coco(annotation_json, images_dir).to_coco()
    names = {category["id"]: category["name"] for category in coco["categories"]}
    assert names == {1: "car", 2: "train", 3: "dog"}
    got = [(a["image_id"], names[a["category_id"]], a["bbox"]) for a in coco["annotations"]]
    assert got == [(10, "dog", [1.5, 2, 10, 20]), (20, "car", [4, 4, 8, 8])]
    assert [image["file_name"] for image in coco["images"]] == ["a.jpg", "sub/b.png", "empty.jpg"]


def test_crowd_annotations_are_dropped(tmp_path: Path, coco_builder) -> None:
    annotations = [_annotation(10, 18, [1, 2, 10, 20], iscrowd=1), _annotation(10, 3, [0, 0, 5, 5])]
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES, annotations, CATEGORIES)
    dataset = read_coco(annotation_json, images_dir)
    assert dataset.record(0).labels.tolist() == [0]
    assert dataset.num_boxes == 1


def test_invalid_boxes_are_dropped_with_one_warning(tmp_path: Path, coco_builder) -> None:
    annotations = [
        _annotation(10, 3, [10, 10, 0, 5]),  # zero width
        _annotation(10, 3, [100, 10, 5, 5]),  # entirely right of the 64 px image
        _annotation(10, 3, [60, 40, 10, 10]),  # partially outside: clipped
        _annotation(20, 3, [5, 5, -3, 4]),  # negative width
    ]
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES, annotations, CATEGORIES)
    with pytest.warns(DroppedBoxesWarning) as caught:
        dataset = read_coco(annotation_json, images_dir)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "dropped 3" in message and "a.jpg" in message and "sub/b.png" in message
    assert dataset.record(0).boxes.tolist() == [[60, 40, 64, 48]]
    assert dataset.record(1).boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("images", "annotations", "categories", "fragment"),
    [
        (IMAGES, [_annotation(99, 3, [0, 0, 1, 1])], CATEGORIES, "unknown image_id 99"),
        (IMAGES, [_annotation(10, 5, [0, 0, 1, 1])], CATEGORIES, "unknown category_id 5"),
        (IMAGES, [_annotation(10, 3, [0, 0, 1])], CATEGORIES, "'bbox' must be 4 numbers"),
        (IMAGES, [{"image_id": 10, "category_id": 3}], CATEGORIES, "lacks the 'bbox' field"),
        (
            [{"id": 1, "file_name": "a.jpg", "width": 8, "height": "8"}],
            [],
            CATEGORIES,
            "'height' has the wrong type",
        ),
        (IMAGES, [], [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "duplicated category id"),
        (IMAGES, [], [], "'categories' is empty"),
    ],
)
def test_malformed_entries_raise_naming_the_file(
    tmp_path: Path, coco_builder, images, annotations, categories, fragment
) -> None:
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES, annotations, categories)
    annotation_json.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    with pytest.raises(DatasetError, match="instances.json") as error:
        read_coco(annotation_json, images_dir)
    assert fragment in str(error.value)


def test_missing_image_file_raises_naming_it(tmp_path: Path, coco_builder) -> None:
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES, [], CATEGORIES, write_images=False)
    with pytest.raises(DatasetError, match=r"a\.jpg: image file not found"):
        read_coco(annotation_json, images_dir)


def test_missing_or_unparsable_json_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nothing.json"):
        read_coco(tmp_path / "nothing.json", tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json.*not valid JSON"):
        read_coco(broken, tmp_path)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="partial.json lacks the 'annotations' field"):
        read_coco(partial, tmp_path)


def test_image_size_is_read_from_the_header_when_absent(tmp_path: Path, coco_builder) -> None:
    annotation_json, images_dir = coco_builder(tmp_path, IMAGES[:1], [], CATEGORIES)
    annotation_json.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": CATEGORIES})
    )
    dataset = read_coco(annotation_json, images_dir)
    assert (dataset.record(0).width, dataset.record(0).height) == (64, 48)
    assert dataset.record(0).boxes.dtype == torch.float32
