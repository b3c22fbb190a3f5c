"""Builders of tiny COCO / VOC / YOLO data sets in ``tmp_path`` for the data-layer tests.

Each fixture returns a function, so a test can write exactly the files it needs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

#: One VOC object: (class name, (xmin, ymin, xmax, ymax), difficult).
VocObject = tuple[str, tuple[float, float, float, float], bool]


def write_image(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    """Write a small image (a colour gradient, in the given PIL mode) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.convert(mode).save(path)
    return path


def write_voc_xml(
    path: Path, image_name: str, size: tuple[int, int] | None, objects: Sequence[VocObject]
) -> Path:
    """Write a Pascal VOC annotation file; ``size=None`` leaves out ``<size>``."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = image_name
    if size is not None:
        size_element = ET.SubElement(root, "size")
        ET.SubElement(size_element, "width").text = str(size[0])
        ET.SubElement(size_element, "height").text = str(size[1])
        ET.SubElement(size_element, "depth").text = "3"
    for name, box, difficult in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = name
        ET.SubElement(element, "difficult").text = "1" if difficult else "0"
        bndbox = ET.SubElement(element, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path)
    return path


def build_voc(
    root: Path,
    images: dict[str, Sequence[VocObject]],
    splits: dict[str, Sequence[str]],
    *,
    image_size: tuple[int, int] = (64, 48),
    write_size: bool = True,
) -> Path:
    """A VOC root with one JPEG + XML per entry of ``images`` and one ``ImageSets/Main`` file per split."""
    for stem, objects in images.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg", *image_size)
        size = image_size if write_size else None
        write_voc_xml(root / "Annotations" / f"{stem}.xml", f"{stem}.jpg", size, objects)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for split, stems in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
    return root


def build_coco(
    folder: Path,
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    categories: Sequence[dict[str, Any]],
    *,
    write_images: bool = True,
) -> tuple[Path, Path]:
    """A COCO JSON file plus its images folder (images written at their declared sizes)."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    if write_images:
        for image in images:
            write_image(images_dir / image["file_name"], image["width"], image["height"])
    annotation_json = folder / "instances.json"
    annotation_json.write_text(
        json.dumps({"images": list(images), "annotations": list(annotations), "categories": list(categories)})
    )
    return annotation_json, images_dir


def build_yolo(
    root: Path,
    labels: dict[str, dict[str, str | None]],
    names: list[str] | dict[int, str],
    *,
    image_size: tuple[int, int] = (64, 48),
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """A YOLO layout: ``labels[split][stem]`` is the label file text (``None``: no label file)."""
    config: dict[str, Any] = {"path": ".", "names": names}
    for split, files in labels.items():
        config[split] = f"images/{split}"
        for stem, text in files.items():
            write_image(root / "images" / split / f"{stem}.png", *image_size)
            if text is not None:
                label_path = root / "labels" / split / f"{stem}.txt"
                label_path.parent.mkdir(parents=True, exist_ok=True)
                label_path.write_text(text)
    config.update(extra_config or {})
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(config))
    return data_yaml


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def voc_xml_writer() -> Callable[..., Path]:
    return write_voc_xml


@pytest.fixture
def voc_builder() -> Callable[..., Path]:
    return build_voc


@pytest.fixture
def coco_builder() -> Callable[..., tuple[Path, Path]]:
    return build_coco


@pytest.fixture
def yolo_builder() -> Callable[..., Path]:
    return build_yolo
