"""parse_data_spec: every accepted form, split handling and the errors for bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detlosses.data import DatasetError, DetectionDataset, SyntheticShapes, parse_data_spec


def test_coco_spec(tmp_path: Path, coco_builder) -> None:
    images = [{"id": 3, "file_name": "a.jpg", "width": 16, "height": 16}]
    annotations = [{"image_id": 3, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0}]
    annotation_json, images_dir = coco_builder(tmp_path, images, annotations, [{"id": 1, "name": "x"}])
    dataset = parse_data_spec(f"coco:{annotation_json}:{images_dir}", "val")
    assert isinstance(dataset, DetectionDataset)
    assert dataset.classes == ["x"] and dataset.num_boxes == 1


def test_voc_spec_uses_the_split_unless_overridden(tmp_path: Path, voc_builder) -> None:
    images = {"a": [("cat", (1, 1, 5, 5), False)], "b": [], "c": []}
    root = voc_builder(tmp_path, images, {"train": ["a"], "val": ["b", "c"], "test": ["c"]})
    assert len(parse_data_spec(f"voc:{root}", "train")) == 1
    assert len(parse_data_spec(f"voc:{root}", "val")) == 2
    assert len(parse_data_spec(f"voc:{root}:test", "val")) == 1


def test_yolo_spec_uses_the_split_unless_overridden(tmp_path: Path, yolo_builder) -> None:
    labels = {"train": {"a": "0 0.5 0.5 0.2 0.2", "b": None}, "val": {"c": None}}
    data_yaml = yolo_builder(tmp_path, labels, ["thing"])
    assert len(parse_data_spec(f"yolo:{data_yaml}", "train")) == 2
    assert len(parse_data_spec(f"yolo:{data_yaml}", "val")) == 1
    assert len(parse_data_spec(f"yolo:{data_yaml}:train", "val")) == 2


def test_synthetic_spec_defaults_and_options() -> None:
    default = parse_data_spec("synthetic", "train")
    assert isinstance(default, SyntheticShapes)
    assert len(default) == 128 and default.image_size == 128 and default.seed == 0
    custom = parse_data_spec("synthetic:images=12,size=64,seed=7,objects=3,empty=0.5", "train")
    assert len(custom) == 12 and custom.image_size == 64 and custom.seed == 7
    assert custom.max_objects == 3 and custom.empty_fraction == 0.5
    assert torch.equal(custom[0][0], SyntheticShapes(12, 64, 7, max_objects=3, empty_fraction=0.5)[0][0])


def test_synthetic_train_and_val_are_different_images_of_the_same_distribution() -> None:
    train = parse_data_spec("synthetic:images=16,size=64,seed=0", "train")
    val = parse_data_spec("synthetic:images=16,size=64,seed=0", "val")
    assert train.seed != val.seed
    assert (len(train), train.image_size, train.classes) == (len(val), val.image_size, val.classes)
    assert not any(torch.equal(train[i][0], val[i][0]) for i in range(16))
    again = parse_data_spec("synthetic:images=16,size=64,seed=0", "val")
    assert torch.equal(val[3][0], again[3][0])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("imagenet:/data", "unknown kind 'imagenet'"),
        ("", "unknown kind ''"),
        ("coco:only.json", "coco needs an annotation file and an images folder"),
        ("voc:", "voc needs a path"),
        ("yolo:a:b:c", "yolo needs a path"),
        ("synthetic:colour=red", "unknown synthetic option 'colour=red'"),
        ("synthetic:images", "unknown synthetic option 'images'"),
        ("synthetic:images=many", "needs a number"),
        ("synthetic:size=4", "image_size must be at least 16"),
    ],
)
def test_bad_specs_raise_value_error_listing_the_accepted_forms(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_data_spec(spec, "train")
    message = str(error.value)
    assert fragment in message
    for form in ("coco:<annotations.json>:<images_dir>", "voc:<root>", "yolo:<data.yaml>", "synthetic"):
        assert form in message


def test_missing_files_behind_a_valid_spec_raise_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train.txt"):
        parse_data_spec(f"voc:{tmp_path}", "train")
    with pytest.raises(DatasetError, match="nothing.yaml"):
        parse_data_spec(f"yolo:{tmp_path / 'nothing.yaml'}", "train")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([]))
    with pytest.raises(DatasetError, match="bad.json"):
        parse_data_spec(f"coco:{bad}:{tmp_path}", "train")
