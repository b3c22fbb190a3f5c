"""read_yolo: data.yaml forms, label files, box conversion and validation, errors with file and line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from detlosses.data import DatasetError, DroppedBoxesWarning, read_yolo

LABELS = {
    "train": {
        "000000000042": "0 0.5 0.5 0.5 0.5\n\n2 0.25 0.25 0.125 0.25\n",
        "000000000007": None,  # no label file: pure negative
        "000000000100": "",  # empty label file: pure negative
    },
    "val": {"000000000005": "1 0.5 0.5 1.0 1.0\n"},
}


def test_reads_splits_boxes_and_numeric_image_ids(tmp_path: Path, yolo_builder) -> None:
    data_yaml = yolo_builder(tmp_path, LABELS, {0: "person", 1: "bicycle", 2: "car"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = read_yolo(data_yaml, "train")
        val = read_yolo(data_yaml, "val")
    assert train.classes == val.classes == ["person", "bicycle", "car"]
    assert [train.image_info(i)["id"] for i in range(len(train))] == [7, 42, 100]
    assert train.image_info(1) == {"id": 42, "file_name": "000000000042.png", "width": 64, "height": 48}
    assert train.record(0).boxes.shape == (0, 4) and train.record(2).boxes.shape == (0, 4)
    assert train.record(1).boxes.tolist() == [[16, 12, 48, 36], [12, 6, 20, 18]]
    assert train.record(1).labels.tolist() == [0, 2]
    assert val.record(0).boxes.tolist() == [[0, 0, 64, 48]]
    image, target = train[0]
    assert image.shape == (3, 48, 64) and target["labels"].shape == (0,)


def test_names_as_a_list_and_relative_root(tmp_path: Path, yolo_builder) -> None:
    data_yaml = yolo_builder(tmp_path / "set", LABELS, ["a", "b", "c"])
    config = yaml.safe_load(data_yaml.read_text())
    config["path"] = "../set"
    elsewhere = tmp_path / "configs" / "data.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(yaml.safe_dump(config))
    dataset = read_yolo(elsewhere, "val")
    assert dataset.classes == ["a", "b", "c"]
    assert len(dataset) == 1


def test_non_numeric_image_names_get_positional_ids(tmp_path: Path, yolo_builder) -> None:
    data_yaml = yolo_builder(tmp_path, {"train": {"cat_b": "0 0.5 0.5 0.2 0.2", "cat_a": None}}, ["cat"])
    dataset = read_yolo(data_yaml, "train")
    assert [(dataset.image_info(i)["file_name"], dataset.image_info(i)["id"]) for i in range(2)] == [
        ("cat_a.png", 1),
        ("cat_b.png", 2),
    ]


def test_invalid_boxes_dropped_with_one_warning(tmp_path: Path, yolo_builder) -> None:
    labels = {
        "train": {
            "good": "0 0.5 0.5 0.5 0.5\n",
            "flat": "0 0.5 0.5 0.0 0.5\n0 0.5 0.5 0.5 0.5\n",
            "away": "0 1.5 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.2\n",
        }
    }
    data_yaml = yolo_builder(tmp_path, labels, ["thing"])
    with pytest.warns(DroppedBoxesWarning) as caught:
        dataset = read_yolo(data_yaml, "train")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "dropped 2" in message and "flat.txt" in message and "away.txt" in message
    assert "good.txt" not in message
    away = dataset.record(0)
    assert away.boxes.flatten().tolist() == pytest.approx([54.4, 19.2, 64.0, 28.8])


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("0 0.5 0.5 0.5", "expected 5 fields"),
        ("0 0.5 0.5 0.5 0.5 0.1", "expected 5 fields"),
        ("3 0.5 0.5 0.5 0.5", "class id 3 out of range"),
        ("-1 0.5 0.5 0.5 0.5", "class id -1 out of range"),
        ("x 0.5 0.5 0.5 0.5", "is not an integer"),
        ("0 0.5 abc 0.5 0.5", "non-numeric"),
        ("0 0.5 nan 0.5 0.5", "must be finite"),
    ],
)
def test_malformed_label_line_raises_naming_file_and_line(
    tmp_path: Path, yolo_builder, line: str, fragment: str
) -> None:
    labels = {"train": {"img": f"0 0.5 0.5 0.1 0.1\n{line}\n"}}
    data_yaml = yolo_builder(tmp_path, labels, ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"img\.txt:2: ") as error:
        read_yolo(data_yaml, "train")
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"names": {0: "a", 2: "c"}}, "'names' ids must be 0..1"),
        ({"names": []}, "'names' must be a non-empty list"),
        ({"names": ["a", "a"]}, "class names must be unique"),
        ({"names": ["a"], "nc": 2}, "'nc' is 2"),
        ({"train": 5}, "'train' must name a folder"),
        ({"train": "images/nowhere"}, "image folder"),
        ({"train": "list.txt"}, "is a file"),
    ],
)
def test_bad_data_yaml_raises_naming_it(tmp_path: Path, yolo_builder, config: dict, fragment: str) -> None:
    (tmp_path / "list.txt").write_text("images/train/img.png\n")
    data_yaml = yolo_builder(tmp_path, {"train": {"img": ""}}, ["a"], extra_config=config)
    with pytest.raises(DatasetError, match=r"data\.yaml") as error:
        read_yolo(data_yaml, "train")
    assert fragment in str(error.value)


def test_missing_split_entry_and_missing_or_broken_yaml(tmp_path: Path, yolo_builder) -> None:
    data_yaml = yolo_builder(tmp_path, {"train": {"img": ""}}, ["a"])
    with pytest.raises(DatasetError, match=r"data\.yaml: 'val' must name a folder"):
        read_yolo(data_yaml, "val")
    with pytest.raises(DatasetError, match=r"absent\.yaml: YOLO data file not found"):
        read_yolo(tmp_path / "absent.yaml", "train")
    broken = tmp_path / "broken.yaml"
    broken.write_text("names: [a, b\n")
    with pytest.raises(DatasetError, match=r"broken\.yaml: unparsable YAML"):
        read_yolo(broken, "train")


def test_images_outside_an_images_folder_are_rejected(tmp_path: Path, image_writer) -> None:
    image_writer(tmp_path / "pictures" / "a.png", 8, 8)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"train": "pictures", "names": ["a"]}))
    with pytest.raises(DatasetError, match="not under an 'images' folder"):
        read_yolo(data_yaml, "train")


def test_unreadable_image_raises_naming_it(tmp_path: Path, yolo_builder) -> None:
    data_yaml = yolo_builder(tmp_path, {"train": {"img": ""}}, ["a"])
    (tmp_path / "images" / "train" / "img.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"img\.png: not a readable image"):
        read_yolo(data_yaml, "train")
