"""read_voc on the layouts VOC-XML data sets are published in, and its messages for broken ones."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from detlosses.data import DatasetError, parse_data_spec, read_coco, read_voc

from .conftest import write_image, write_voc_xml

OBJECTS = {"a": [("cell", (1, 1, 20, 20), False)], "b": [("cell", (5, 5, 30, 30), False)], "c": []}


def _export_layout(root: Path, images: dict = OBJECTS, image_folder: str = "images") -> Path:
    """The common export layout: ``annotations/*.xml`` + ``images/``, no ``ImageSets``."""
    for stem, objects in images.items():
        write_image(root / image_folder / f"{stem}.png", 64, 48)
        write_voc_xml(root / "annotations" / f"{stem}.xml", f"{stem}.png", (64, 48), objects)
    return root


def _set_xml_field(xml_path: Path, tag: str, text: str) -> None:
    tree = ET.parse(xml_path)
    element = tree.getroot().find(tag)
    if element is None:
        element = ET.SubElement(tree.getroot(), tag)
    element.text = text
    tree.write(xml_path)


def test_reads_annotations_and_images_folders_without_imagesets(tmp_path: Path) -> None:
    root = _export_layout(tmp_path / "export")
    dataset = read_voc(root, "train")
    assert len(dataset) == 3 and dataset.classes == ["cell"] and dataset.num_boxes == 2
    assert [dataset.record(i).path.name for i in range(3)] == ["a.png", "b.png", "c.png"]
    assert len(parse_data_spec(f"voc:{root}", "val")) == 3  # no ImageSets: every split is all images


def test_image_found_through_the_xml_path_and_folder_fields(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(tmp_path / "elsewhere" / "x1.png", 64, 48)
    write_voc_xml(root / "annotations" / "a.xml", "renamed.png", (64, 48), OBJECTS["a"])
    _set_xml_field(root / "annotations" / "a.xml", "path", str(tmp_path / "elsewhere" / "x1.png"))
    write_image(root / "pictures" / "b.png", 64, 48)
    write_voc_xml(root / "annotations" / "b.xml", "b.png", (64, 48), OBJECTS["b"])
    _set_xml_field(root / "annotations" / "b.xml", "folder", "pictures")
    dataset = read_voc(root, "train")
    assert [dataset.record(i).path for i in range(2)] == [tmp_path / "elsewhere" / "x1.png",
                                                           (root / "pictures" / "b.png").resolve()]


def test_nonexistent_root_is_reported_as_such(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere: data set root does not exist"):
        parse_data_spec(f"voc:{tmp_path / 'nowhere'}", "train")


def test_empty_root_names_the_whole_expected_layout_in_one_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        read_voc(tmp_path, "train")
    message = str(error.value)
    for fragment in ("no Annotations/ (or annotations/) folder", "JPEGImages/ (or images/", "<path>",
                     "ImageSets/Main/train.txt (optional)", "--val-fraction"):
        assert fragment in message


def test_all_missing_images_in_one_message_each_path_once(tmp_path: Path) -> None:
    root = _export_layout(tmp_path / "export")
    (root / "images" / "a.png").unlink()
    (root / "images" / "c.png").unlink()
    with pytest.raises(DatasetError) as error:
        read_voc(root, "train")
    message = str(error.value)
    assert "2 of 3 images not found" in message
    assert "a.xml: image file not found" in message and "c.xml: image file not found" in message
    for line in message.splitlines():
        if "image file not found" in line:
            looked_for = line.split("looked for ", 1)[1].split(" (or another", 1)[0].split(", ")
            assert len(looked_for) == len(set(looked_for)), line
            folders = line.split(" in ", 1)[1].split(", ")
            assert len(folders) == len(set(folders)), line


def test_voc_missing_image_message_lists_no_path_twice(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, {"img": OBJECTS["a"]}, {"train": ["img"]})
    (root / "JPEGImages" / "img.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        read_voc(root, "train")
    line = next(text for text in str(error.value).splitlines() if "image file not found" in text)
    assert line.count(str((root / "JPEGImages").resolve() / "img.jpg")) <= 1
    assert line.count("img.jpg") == 1


def test_missing_split_file_lists_the_available_splits(tmp_path: Path, voc_builder) -> None:
    root = voc_builder(tmp_path, {"img": OBJECTS["a"]}, {"train": ["img"], "trainval": ["img"]})
    with pytest.raises(DatasetError, match=r"val\.txt: VOC split file not found \(splits there: train, trainval\)"):
        read_voc(root, "val")


def test_missing_coco_images_folder(tmp_path: Path, coco_builder) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 16, "height": 16}]
    annotation_json, _ = coco_builder(tmp_path, images, [], [{"id": 1, "name": "x"}])
    with pytest.raises(DatasetError, match=r"nothere: COCO images folder not found"):
        read_coco(annotation_json, tmp_path / "nothere")
