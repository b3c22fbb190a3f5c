"""read_voc: class list across the root, difficult objects, sizes, box validation and errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from detlosses.data import DatasetError, DroppedBoxesWarning, read_voc

IMAGES = {
    "img_a": [("dog", (1, 2, 30, 40), False), ("cat", (10, 10, 20, 20), True)],
    "img_b": [],
    "img_c": [("zebra", (0, 0, 64, 48), False)],
}
SPLITS = {"train": ["img_a", "img_b"], "val": ["img_c"]}


def test_reads_split_with_class_list_from_all_annotation_files(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    train = read_voc(root, "train")
    val = read_voc(root, "val")
    assert train.classes == val.classes == ["cat", "dog", "zebra"]
    assert len(train) == 2 and len(val) == 1
    assert train.record(0).boxes.tolist() == [[1, 2, 30, 40], [10, 10, 20, 20]]
    assert train.record(0).labels.tolist() == [1, 0]
    assert train.record(1).boxes.shape == (0, 4) and train.record(1).labels.shape == (0,)
    assert val.record(0).labels.tolist() == [2]
    ids = [train.image_info(i)["id"] for i in range(2)] + [val.image_info(0)["id"]]
    assert len(set(ids)) == 3
    assert train.image_info(0) == {"id": ids[0], "file_name": "img_a.jpg", "width": 64, "height": 48}
    image, target = train[1]
    assert image.shape == (3, 48, 64) and target["boxes"].shape == (0, 4)


def test_difficult_objects_kept_by_default_and_droppable(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    assert read_voc(root, "train").num_boxes == 2
    easy = read_voc(root, "train", keep_difficult=False)
    assert easy.num_boxes == 1 and easy.record(0).labels.tolist() == [1]
    assert easy.classes == ["cat", "dog", "zebra"]


def test_explicit_classes_define_the_labels(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    dataset = read_voc(root, "train", classes=["dog", "cat", "zebra", "horse"])
    assert dataset.classes == ["dog", "cat", "zebra", "horse"]
    assert dataset.record(0).labels.tolist() == [0, 1]


def test_unknown_class_raises_naming_the_file(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    with pytest.raises(DatasetError, match=r"img_a\.xml: unknown class 'dog'"):
        read_voc(root, "train", classes=["cat"])


def test_image_size_from_header_when_xml_has_no_size(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS, image_size=(50, 30), write_size=False)
    record = read_voc(root, "val").record(0)
    assert (record.width, record.height) == (50, 30)
    assert record.boxes.tolist() == [[0, 0, 50, 30]]  # clipped to the real image


def test_invalid_boxes_dropped_with_one_warning_naming_files(tmp_path: Path, voc_builder) -> None:
    images = {
        "ok": [("cell", (1, 1, 10, 10), False)],
        "flat": [("cell", (5, 5, 5, 5), False), ("cell", (1, 1, 10, 10), False)],
        "outside": [("cell", (70, 10, 90, 20), False), ("cell", (60, 40, 80, 60), False)],
        "inverted": [("cell", (20, 20, 10, 30), False)],
    }
    root = voc_builder(tmp_path, images, {"all": list(images)})
    with pytest.warns(DroppedBoxesWarning) as caught:
        dataset = read_voc(root, "all")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "dropped 3" in message
    assert "2 with zero or negative width/height" in message and "1 entirely outside" in message
    for name in ("flat.xml", "outside.xml", "inverted.xml"):
        assert name in message
    assert "ok.xml" not in message
    assert dataset.num_boxes == 3
    assert dataset.record(2).boxes.tolist() == [[60, 40, 64, 48]]


def test_no_warning_when_all_boxes_are_valid(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_voc(root, "train")


def test_missing_split_file(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    with pytest.raises(DatasetError, match=r"test\.txt: VOC split file not found"):
        read_voc(root, "test")


def test_missing_annotation_file(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, {"train": ["img_a", "ghost"]})
    with pytest.raises(DatasetError, match=r"ghost\.xml: annotation file not found"):
        read_voc(root, "train")


def test_missing_image_file(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    (root / "JPEGImages" / "img_c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"img_c\.xml: image file not found.*img_c\.jpg"):
        read_voc(root, "val")


def test_unparsable_annotation_file(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    (root / "Annotations" / "img_b.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"img_b\.xml: unparsable XML"):
        read_voc(root, "train")


def test_unparsable_file_outside_the_split_matters_only_for_the_class_list(
    tmp_path: Path, voc_builder
) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    (root / "Annotations" / "img_c.xml").write_text("garbage")
    with pytest.raises(DatasetError, match=r"img_c\.xml"):
        read_voc(root, "train")
    assert read_voc(root, "train", classes=["cat", "dog"]).num_boxes == 2


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        ("<annotation><object><name>a</name></object></annotation>", "has no <bndbox>"),
        ("<annotation><object><bndbox/></object></annotation>", "has no <name>"),
        (
            "<annotation><object><name>a</name><bndbox><xmin>x</xmin><ymin>0</ymin><xmax>1</xmax>"
            "<ymax>1</ymax></bndbox></object></annotation>",
            "<xmin> is not a number",
        ),
        (
            "<annotation><object><name>a</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>1</xmax>"
            "</bndbox></object></annotation>",
            "lacks <ymax>",
        ),
        ("<root/>", "expected <annotation>"),
    ],
)
def test_malformed_annotation_raises_naming_the_file(
    tmp_path: Path, voc_builder, xml: str, fragment: str
) -> None:
    root = voc_builder(tmp_path, IMAGES, SPLITS)
    (root / "Annotations" / "img_b.xml").write_text(xml)
    with pytest.raises(DatasetError, match=r"img_b\.xml") as error:
        read_voc(root, "train", classes=["cat", "dog", "a"])
    assert fragment in str(error.value)


def test_split_file_errors_name_file_and_line(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, IMAGES, {"twice": ["img_a", "img_b", "img_a"], "wide": ["img_a 1"]})
    with pytest.raises(DatasetError, match=r"twice\.txt:3: image id 'img_a' is listed twice"):
        read_voc(root, "twice")
    with pytest.raises(DatasetError, match=r"wide\.txt:1: expected one image id per line"):
        read_voc(root, "wide")
