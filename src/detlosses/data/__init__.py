"""Data layer of the detector pipeline: data sets, readers, synthetic shapes, transforms.

Conventions (shared with the evaluator):

* boxes are ``float32`` XYXY in absolute pixels; labels are ``int64`` 0-based contiguous class indices;
* COCO ground truth uses ``category_id = label + 1`` (:func:`label_to_category_id`,
  :func:`category_id_to_label`) and boxes ``[x, y, w, h]`` in original image coordinates;
* ``dataset[i]`` is ``(image, target)`` with ``target = {"boxes", "labels", "image_id", "orig_size"}``.
"""

from .coco_format import category_id_to_label, label_to_category_id
from .dataset import DetectionDataset, ImageRecord
from .errors import DatasetError, DroppedBoxesWarning
from .readers import read_coco, read_voc, read_yolo
from .specs import parse_data_spec
from .splits import holdout_split, image_keys, shared_images
from .synthetic import SHAPE_CLASSES, SyntheticShapes
from .transforms import build_transforms, collate_detection, rescale_boxes

__all__ = [
    "SHAPE_CLASSES",
    "DatasetError",
    "DetectionDataset",
    "DroppedBoxesWarning",
    "ImageRecord",
    "SyntheticShapes",
    "build_transforms",
    "category_id_to_label",
    "collate_detection",
    "holdout_split",
    "image_keys",
    "label_to_category_id",
    "parse_data_spec",
    "read_coco",
    "read_voc",
    "read_yolo",
    "rescale_boxes",
    "shared_images",
]
