"""Readers of the COCO, Pascal VOC and YOLO annotation layouts, all returning a :class:`DetectionDataset`.

Every reader:

* maps classes to 0-based contiguous labels (``category_id = label + 1`` in COCO form);
* stores boxes as ``float32`` XYXY absolute pixels of the stored image;
* clips boxes partially outside the image and drops degenerate boxes (zero or negative width/height)
  and boxes entirely outside the image, with ONE :class:`~detlosses.data.errors.DroppedBoxesWarning`
  per read that counts them and names the files (see :mod:`detlosses.data.box_sanitizer`);
* raises :class:`~detlosses.data.errors.DatasetError` naming the file for a missing image, a missing or
  unparsable annotation file, or a malformed entry;
* keeps images without boxes as pure negatives.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .box_sanitizer import BoxSanitizer
from .dataset import DetectionDataset, ImageRecord
from .errors import DatasetError
from .image_io import IMAGE_SUFFIXES, read_image_size


def assign_image_ids(stems: Sequence[str]) -> list[int]:
    """Integer image ids for images named ``stems`` (file names without suffix), in the given order.

    When every stem is a decimal number and the numbers are unique (e.g. COCO's ``000000000009``), the
    ids are those numbers, so they match the source data set; otherwise the ids are the 1-based positions
    in ``stems``.
    """
    if stems and all(stem.isdecimal() for stem in stems):
        numbers = [int(stem) for stem in stems]
        if len(set(numbers)) == len(numbers):
            return numbers
    return list(range(1, len(stems) + 1))


def _boxes_tensor(boxes: list[list[float]]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def _labels_tensor(labels: list[int]) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.int64).reshape(-1)


# --------------------------------------------------------------------------------------------------- COCO


def _require(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``entry[key]`` checked to be of ``kind`` (bools are never accepted as numbers)."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} must be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise DatasetError(f"{where} lacks the '{key}' field")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DatasetError(f"{where}: '{key}' has the wrong type ({type(value).__name__}: {value!r})")
    return value


def read_coco(annotation_json: str | Path, images_dir: str | Path) -> DetectionDataset:
    """Read a COCO-format annotation file.

    Categories are remapped to contiguous 0-based labels in increasing category-id order, keeping their
    names (so the original category ids are not preserved; the detlosses convention is then
    ``category_id = label + 1``).  Image ids are kept.  Crowd annotations (``iscrowd = 1``) are DROPPED:
    they mark regions that evaluation ignores, not objects to learn.

    Args:
        annotation_json: the COCO JSON file (``images``, ``annotations``, ``categories``).
        images_dir: the folder that ``file_name`` of each image is relative to.

    Raises:
        DatasetError: when the JSON is missing or unparsable, a required field is missing or has the
            wrong type, an annotation refers to an unknown image or category, or an image file is missing.
    """
    annotation_json = Path(annotation_json)
    images_dir = Path(images_dir)
    if not annotation_json.is_file():
        raise DatasetError(f"{annotation_json}: COCO annotation file not found")
    try:
        data = json.loads(annotation_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{annotation_json}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{annotation_json}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        _require(data, key, list, str(annotation_json))

    names_by_id: dict[int, str] = {}
    for position, category in enumerate(data["categories"]):
        where = f"{annotation_json}: categories[{position}]"
        category_id = _require(category, "id", int, where)
        if category_id in names_by_id:
            raise DatasetError(f"{where}: duplicated category id {category_id}")
        names_by_id[category_id] = _require(category, "name", str, where)
    if not names_by_id:
        raise DatasetError(f"{annotation_json}: 'categories' is empty")
    label_of = {category_id: label for label, category_id in enumerate(sorted(names_by_id))}
    classes = [names_by_id[category_id] for category_id in sorted(names_by_id)]
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{annotation_json}: category names must be unique, got {classes}")

    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: COCO images folder not found (the folder that the 'file_name' of "
                           f"each image in {annotation_json} is relative to)")
    images: dict[int, dict[str, Any]] = {}
    missing: list[Path] = []
    for position, image in enumerate(data["images"]):
        where = f"{annotation_json}: images[{position}]"
        image_id = _require(image, "id", int, where)
        if image_id in images:
            raise DatasetError(f"{where}: duplicated image id {image_id}")
        file_name = _require(image, "file_name", str, where)
        path = images_dir / file_name
        if not path.is_file():
            missing.append(path)
            continue
        if "width" in image or "height" in image:
            width = _require(image, "width", int, where)
            height = _require(image, "height", int, where)
            if width <= 0 or height <= 0:
                raise DatasetError(f"{where}: image size must be positive, got {width}x{height}")
        else:
            width, height = read_image_size(path)
        images[image_id] = {"file_name": file_name, "path": path, "width": width, "height": height}
    if missing:
        more = f" ({len(missing) - 1} more of the {len(data['images'])} images missing too)" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0]}: image file not found (listed in {annotation_json}){more}")

    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in images}
    labels: dict[int, list[int]] = {image_id: [] for image_id in images}
    for position, annotation in enumerate(data["annotations"]):
        where = f"{annotation_json}: annotations[{position}]"
        image_id = _require(annotation, "image_id", int, where)
        if image_id not in images:
            raise DatasetError(f"{where}: unknown image_id {image_id}")
        category_id = _require(annotation, "category_id", int, where)
        if category_id not in label_of:
            raise DatasetError(f"{where}: unknown category_id {category_id}")
        if annotation.get("iscrowd", 0):
            continue
        bbox = _require(annotation, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
            raise DatasetError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(label_of[category_id])

    sanitizer = BoxSanitizer(annotation_json)
    records = []
    for image_id, image in images.items():
        kept_boxes, kept_labels = sanitizer(
            _boxes_tensor(boxes[image_id]),
            _labels_tensor(labels[image_id]),
            width=image["width"],
            height=image["height"],
            file=f"{annotation_json.name}[{image['file_name']}]",
        )
        records.append(
            ImageRecord(
                image_id=image_id,
                file_name=image["file_name"],
                width=image["width"],
                height=image["height"],
                boxes=kept_boxes,
                labels=kept_labels,
                path=image["path"],
            )
        )
    sanitizer.report()
    return DetectionDataset(records, classes)


# ---------------------------------------------------------------------------------------------------- VOC


@dataclass(frozen=True)
class _VocObject:
    name: str
    box: list[float]
    difficult: bool


@dataclass(frozen=True)
class _VocAnnotation:
    path: Path
    filename: str | None
    folder: str | None
    image_path: str | None
    width: int | None
    height: int | None
    objects: list[_VocObject]


def _xml_number(element: ET.Element, tag: str, xml_path: Path) -> float:
    child = element.find(tag)
    if child is None or child.text is None:
        raise DatasetError(f"{xml_path}: <{element.tag}> lacks <{tag}>")
    try:
        return float(child.text)
    except ValueError as error:
        raise DatasetError(f"{xml_path}: <{tag}> is not a number: {child.text!r}") from error


def _xml_text(root: ET.Element, tag: str) -> str | None:
    element = root.find(tag)
    text = (element.text or "").strip() if element is not None else ""
    return text or None


def _parse_voc_xml(xml_path: Path) -> _VocAnnotation:
    if not xml_path.is_file():
        raise DatasetError(f"{xml_path}: annotation file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{xml_path}: unparsable XML ({error})") from error
    if root.tag != "annotation":
        raise DatasetError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    width = height = None
    size = root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        width = int(_xml_number(size, "width", xml_path))
        height = int(_xml_number(size, "height", xml_path))
        if width <= 0 or height <= 0:  # some VOC exports write 0: read the image header instead
            width = height = None
    objects = []
    for element in root.iter("object"):
        name_element = element.find("name")
        if name_element is None or not (name_element.text or "").strip():
            raise DatasetError(f"{xml_path}: an <object> has no <name>")
        bndbox = element.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{xml_path}: object '{name_element.text.strip()}' has no <bndbox>")
        box = [_xml_number(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")]
        difficult_element = element.find("difficult")
        difficult = difficult_element is not None and (difficult_element.text or "0").strip() == "1"
        objects.append(_VocObject(name=name_element.text.strip(), box=box, difficult=difficult))
    return _VocAnnotation(xml_path, _xml_text(root, "filename"), _xml_text(root, "folder"), _xml_text(root, "path"),
                          width, height, objects)


#: Folder names (compared case-insensitively) searched for the annotation files and the images.
VOC_ANNOTATION_FOLDERS = ("Annotations", "annotations")
VOC_IMAGE_FOLDERS = ("JPEGImages", "images")


def voc_layout_help(root: Path, split: str) -> str:
    """The folder layout :func:`read_voc` accepts, in words (part of its error messages)."""
    return (
        "Expected a Pascal VOC folder:\n"
        f"  {root}/Annotations/*.xml (or annotations/): one XML file per image;\n"
        f"  {root}/JPEGImages/ (or images/, or beside the XML files, or where each XML's <path> or <folder> "
        "points): the images, named by the XML's <filename> or the XML file's stem;\n"
        f"  {root}/ImageSets/Main/{split}.txt (optional): the image ids of split '{split}'. Without ImageSets "
        "every split is all the images: hold validation images out with --val-fraction 0.2 or name them with "
        "--val-data."
    )


def _child_folders(root: Path, names: Sequence[str]) -> list[Path]:
    """The sub-folders of ``root`` whose names match ``names`` case-insensitively, in ``names`` order."""
    wanted = [name.lower() for name in names]
    found = [child for child in root.iterdir() if child.is_dir() and child.name.lower() in wanted]
    return sorted(found, key=lambda child: (wanted.index(child.name.lower()), child.name))


def _voc_image_path(
    root: Path, image_dirs: list[Path], image_stem: str, annotation: _VocAnnotation
) -> tuple[Path | None, str]:
    """The image of ``annotation``, or ``None`` and a description of where it was looked for."""
    declared = None
    if annotation.image_path is not None:
        declared = Path(annotation.image_path.replace("\\", "/"))
        if not declared.is_absolute():
            declared = root / declared
        if declared.is_file():
            return declared, ""
    folders = list(image_dirs)
    if annotation.folder is not None and (root / annotation.folder).is_dir():
        folders.append(root / annotation.folder)
    folders.append(annotation.path.parent)
    names = [f"{image_stem}.jpg"]
    if annotation.filename is not None:
        names.append(annotation.filename)
    if declared is not None:
        names.append(declared.name)
    names += [f"{image_stem}{suffix}" for suffix in sorted(IMAGE_SUFFIXES)]
    folders = list(dict.fromkeys(folder.resolve() for folder in folders))
    names = list(dict.fromkeys(names))
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate, ""
    where = f"looked for {', '.join(names[:3])} (or another image suffix) in {', '.join(str(f) for f in folders)}"
    if declared is not None:
        where += f"; its <path> {declared} does not exist"
    return None, where


def read_voc(
    root: str | Path,
    split: str = "train",
    *,
    classes: Sequence[str] | None = None,
    keep_difficult: bool = True,
) -> DetectionDataset:
    """Read a Pascal VOC layout: ``Annotations/*.xml``, the images, optionally ``ImageSets/Main/<split>.txt``.

    Accepted layouts (folder names case-insensitive): the VOC one (``Annotations/``, ``JPEGImages/``,
    ``ImageSets/Main/``) and the common export one (``annotations/*.xml`` + ``images/``, no ``ImageSets``).
    With ``ImageSets/Main`` present the split file must exist; without it every split is ALL the annotated
    images (hold validation images out with a hold-out split, see :mod:`detlosses.data.splits`).

    Box coordinates are taken as written (``xmin ymin xmax ymax`` in pixels, VOC's 1-based corners are
    not shifted: the sub-pixel offset is irrelevant next to annotation noise, and clipping to the image
    keeps ``xmax = width`` valid); image sizes come from the XML ``<size>`` when present (and positive),
    else from the image file header.  The image is the XML's ``<path>`` when that file exists, else
    ``<id>.jpg``, the XML's ``<filename>`` or ``<id>`` with another image suffix, looked for in
    ``JPEGImages/`` / ``images/``, in the folder the XML's ``<folder>`` names and beside the XML file.
    Image ids are assigned by :func:`assign_image_ids` over ALL annotation files of ``root`` (sorted), so
    the splits of one root never share an id.

    Args:
        root: the data set folder.
        split: name of the image-id list ``ImageSets/Main/<split>.txt``.
        classes: the class names, indexed by label.  ``None``: the sorted set of object names found across
            ALL annotation files of ``root``, so every split of one root gets the same class list.
        keep_difficult: keep objects marked ``<difficult>1</difficult>`` (default) or drop them.

    Raises:
        DatasetError: when the root does not exist, the annotation folder, the split file, an annotation file
            or images are missing (all missing images in one message, with the expected layout), an XML file
            is unparsable or malformed, or an object's class is not in ``classes``.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: data set root does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: data set root is not a folder")
    annotation_dirs = _child_folders(root, VOC_ANNOTATION_FOLDERS)
    image_dirs = _child_folders(root, VOC_IMAGE_FOLDERS)
    split_dir = root / "ImageSets" / "Main"
    split_file = split_dir / f"{split}.txt"
    problems = []
    if not annotation_dirs:
        problems.append("no Annotations/ (or annotations/) folder")
    elif not any(annotation_dirs[0].glob("*.xml")):
        problems.append(f"no .xml file in {annotation_dirs[0]}")
    if split_dir.is_dir() and not split_file.is_file():
        available = sorted(path.stem for path in split_dir.glob("*.txt"))
        problems.append(f"{split_file}: VOC split file not found (splits there: {', '.join(available) or 'none'})")
    if problems:
        raise DatasetError(f"{root}: " + "; ".join(problems) + ".\n" + voc_layout_help(root, split))
    annotations_dir = annotation_dirs[0]

    all_stems = sorted(path.stem for path in annotations_dir.glob("*.xml"))
    id_of = dict(zip(all_stems, assign_image_ids(all_stems), strict=True))
    if split_dir.is_dir():
        image_stems: list[str] = []
        seen: set[str] = set()
        for line_number, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if len(fields) > 1:
                raise DatasetError(f"{split_file}:{line_number}: expected one image id per line, got {line!r}")
            if fields and fields[0] in seen:
                raise DatasetError(f"{split_file}:{line_number}: image id {fields[0]!r} is listed twice")
            image_stems.extend(fields)
            seen.update(fields)
        for stem in image_stems:
            if stem not in id_of:
                raise DatasetError(
                    f"{annotations_dir / (stem + '.xml')}: annotation file not found "
                    f"(image listed in {split_file})"
                )
    else:
        image_stems = list(all_stems)
    parsed = {stem: _parse_voc_xml(annotations_dir / f"{stem}.xml") for stem in image_stems}
    if classes is None:
        others = (stem for stem in all_stems if stem not in parsed)
        parsed_all = list(parsed.values()) + [_parse_voc_xml(annotations_dir / f"{s}.xml") for s in others]
        classes = sorted({obj.name for annotation in parsed_all for obj in annotation.objects})
        if not classes:
            raise DatasetError(f"{annotations_dir}: no <object> in any annotation file; pass classes=")
    label_of = {name: label for label, name in enumerate(classes)}

    image_paths: dict[str, Path] = {}
    missing: list[str] = []
    for stem in image_stems:
        image_path, where = _voc_image_path(root, image_dirs, stem, parsed[stem])
        if image_path is None:
            missing.append(f"{parsed[stem].path}: image file not found ({where})")
        else:
            image_paths[stem] = image_path
    if missing:
        shown = "\n  ".join(missing[:5]) + (f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(
            f"{root}: {len(missing)} of {len(image_stems)} images not found:\n  {shown}\n"
            + voc_layout_help(root, split)
        )

    sanitizer = BoxSanitizer(f"{root} (split '{split}')")
    records = []
    for stem in image_stems:
        annotation = parsed[stem]
        image_path = image_paths[stem]
        if annotation.width is not None and annotation.height is not None:
            width, height = annotation.width, annotation.height
        else:
            width, height = read_image_size(image_path)
        boxes, labels = [], []
        for obj in annotation.objects:
            if obj.name not in label_of:
                raise DatasetError(
                    f"{annotation.path}: unknown class '{obj.name}' (classes: {list(classes)})"
                )
            if obj.difficult and not keep_difficult:
                continue
            boxes.append(obj.box)
            labels.append(label_of[obj.name])
        kept_boxes, kept_labels = sanitizer(
            _boxes_tensor(boxes),
            _labels_tensor(labels),
            width=width,
            height=height,
            file=annotation.path.name,
        )
        records.append(
            ImageRecord(
                image_id=id_of[stem],
                file_name=image_path.name,
                width=width,
                height=height,
                boxes=kept_boxes,
                labels=kept_labels,
                path=image_path,
            )
        )
    sanitizer.report()
    return DetectionDataset(records, classes)


# --------------------------------------------------------------------------------------------------- YOLO


def _load_yaml_mapping(data_yaml: Path) -> dict[str, Any]:
    if not data_yaml.is_file():
        raise DatasetError(f"{data_yaml}: YOLO data file not found")
    try:
        config = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DatasetError(f"{data_yaml}: unparsable YAML ({error})") from error
    if not isinstance(config, dict):
        raise DatasetError(f"{data_yaml}: expected a YAML mapping with path/train/val/names")
    return config


def _yolo_class_names(config: dict[str, Any], data_yaml: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        if not all(isinstance(key, int) and not isinstance(key, bool) for key in names):
            raise DatasetError(f"{data_yaml}: 'names' keys must be integer class ids, got {list(names)}")
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{data_yaml}: 'names' ids must be 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[class_id] for class_id in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{data_yaml}: 'names' must be a non-empty list or {{id: name}} mapping")
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        raise DatasetError(f"{data_yaml}: class names must be unique, got {names}")
    if "nc" in config and config["nc"] != len(names):
        raise DatasetError(f"{data_yaml}: 'nc' is {config['nc']} but 'names' lists {len(names)} classes")
    return names


def _yolo_label_path(image_path: Path, data_yaml: Path) -> Path:
    """``.../images/<rest>.jpg`` -> ``.../labels/<rest>.txt`` (the LAST ``images`` component is replaced)."""
    parts = image_path.parts
    positions = [position for position, part in enumerate(parts) if part == "images"]
    if not positions:
        raise DatasetError(
            f"{data_yaml}: image {image_path} is not under an 'images' folder, "
            "so its labels folder cannot be located"
        )
    last = positions[-1]
    return Path(*parts[:last], "labels", *parts[last + 1 :]).with_suffix(".txt")


def _parse_yolo_labels(
    label_path: Path, num_classes: int, width: int, height: int
) -> tuple[list[list[float]], list[int]]:
    if not label_path.is_file():
        return [], []
    boxes, labels = [], []
    for line_number, line in enumerate(label_path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{line_number}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}: {line!r}")
        try:
            class_id = int(fields[0])
        except ValueError as error:
            raise DatasetError(f"{where}: class id {fields[0]!r} is not an integer") from error
        if not 0 <= class_id < num_classes:
            raise DatasetError(f"{where}: class id {class_id} out of range [0, {num_classes})")
        try:
            cx, cy, w, h = (float(field) for field in fields[1:])
        except ValueError as error:
            raise DatasetError(f"{where}: non-numeric box value in {line!r}") from error
        if not all(math.isfinite(value) for value in (cx, cy, w, h)):
            raise DatasetError(f"{where}: box values must be finite, got {line!r}")
        boxes.append(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        )
        labels.append(class_id)
    return boxes, labels


def read_yolo(data_yaml: str | Path, split: str = "train") -> DetectionDataset:
    """Read a YOLO / ultralytics layout described by a ``data.yaml``.

    The YAML gives ``path`` (the data set root; relative to the YAML's folder, which is also the default),
    ``train`` / ``val`` / ``test`` (a folder of images, or a list of folders, relative to the root; images
    are found recursively by suffix) and ``names`` (a list, or a mapping ``{id: name}`` with ids
    ``0..n-1``).  Each image ``.../images/<rest>.<ext>`` has its labels in ``.../labels/<rest>.txt``
    (the last ``images`` path component replaced), one ``class cx cy w h`` line per box, normalised to
    ``[0, 1]``.  A missing label file means an image without boxes.  Image sizes come from the image
    headers; image ids from :func:`assign_image_ids` over the image stems (COCO-style numeric names keep
    their numbers).

    Args:
        data_yaml: the data description file.
        split: which entry of the YAML lists the images (``"train"``, ``"val"``, ...).

    Raises:
        DatasetError: when the YAML is missing, unparsable or incomplete, an image folder is missing, or a
            label line is malformed (wrong number of fields, non-numeric value, class id out of range);
            the message names the file and line.
    """
    data_yaml = Path(data_yaml)
    config = _load_yaml_mapping(data_yaml)
    classes = _yolo_class_names(config, data_yaml)
    root = Path(config.get("path") or ".")
    if not root.is_absolute():
        root = data_yaml.parent / root
    entry = config.get(split)
    if isinstance(entry, str):
        folders = [entry]
    elif isinstance(entry, list) and entry and all(isinstance(folder, str) for folder in entry):
        folders = entry
    else:
        raise DatasetError(f"{data_yaml}: '{split}' must name a folder of images (or a list of folders)")

    image_paths: list[tuple[Path, str]] = []
    for folder in folders:
        folder_path = root / folder
        if folder_path.is_file():
            raise DatasetError(
                f"{data_yaml}: '{split}' entry {folder_path} is a file; only folders of images are supported"
            )
        if not folder_path.is_dir():
            raise DatasetError(f"{data_yaml}: '{split}' image folder {folder_path} not found")
        for path in sorted(folder_path.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                image_paths.append((path, path.relative_to(folder_path).as_posix()))
    if not image_paths:
        raise DatasetError(
            f"{data_yaml}: no images found for split '{split}' in {[str(root / f) for f in folders]}"
        )

    image_ids = assign_image_ids([path.stem for path, _ in image_paths])
    sanitizer = BoxSanitizer(f"{data_yaml} (split '{split}')")
    records = []
    for (image_path, file_name), image_id in zip(image_paths, image_ids, strict=True):
        width, height = read_image_size(image_path)
        label_path = _yolo_label_path(image_path, data_yaml)
        boxes, labels = _parse_yolo_labels(label_path, len(classes), width, height)
        kept_boxes, kept_labels = sanitizer(
            _boxes_tensor(boxes), _labels_tensor(labels), width=width, height=height, file=label_path.name
        )
        records.append(
            ImageRecord(
                image_id=image_id,
                file_name=file_name,
                width=width,
                height=height,
                boxes=kept_boxes,
                labels=kept_labels,
                path=image_path,
            )
        )
    sanitizer.report()
    return DetectionDataset(records, classes)
