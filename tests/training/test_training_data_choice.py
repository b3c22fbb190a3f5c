"""Which images a run trains and validates on: separate validation data, hold-outs, and the refusal to
measure on training images; typed config values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.data.conftest import build_coco, build_voc

from detlosses.training import DetectionDataModule, TrainConfig

FAST = dict(image_size=64, batch_size=2, epochs=1, fpn_channels=32, progress_bar=False)


def _coco(folder: Path, n: int = 4, first_id: int = 1) -> str:
    images = [{"id": first_id + i, "file_name": f"im{first_id + i}.jpg", "width": 64, "height": 48} for i in range(n)]
    annotations = [{"id": i + 1, "image_id": image["id"], "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0}
                   for i, image in enumerate(images)]
    annotation_json, images_dir = build_coco(folder, images, annotations, [{"id": 1, "name": "cell"}])
    return f"coco:{annotation_json}:{images_dir}"


def test_one_coco_file_for_training_and_validation_is_refused(tmp_path: Path) -> None:
    spec = _coco(tmp_path / "train")
    module = DetectionDataModule(TrainConfig(data=spec, out=str(tmp_path / "run"), **FAST))
    with pytest.raises(ValueError) as error:
        module.setup("fit")
    message = str(error.value)
    assert "the validation images are the training images (the same 4)" in message
    assert "A coco spec is one annotation file" in message
    for way_out in ("--val-data", "--val-fraction", "--allow-train-as-val"):
        assert way_out in message


def test_coco_validation_file_of_its_own(tmp_path: Path) -> None:
    config = TrainConfig(data=_coco(tmp_path / "train"), val_data=_coco(tmp_path / "val", 2, first_id=10),
                         out=str(tmp_path / "run"), **FAST)
    module = DetectionDataModule(config)
    module.setup("fit")
    assert len(module.train_set) == 4 and len(module.val_set) == 2
    assert {module.val_set.record(i).image_id for i in range(2)} == {10, 11}


def test_training_images_as_validation_only_when_asked(tmp_path: Path) -> None:
    config = TrainConfig(data=_coco(tmp_path / "train"), allow_train_as_val=True, out=str(tmp_path / "run"), **FAST)
    module = DetectionDataModule(config)
    module.setup("fit")
    assert len(module.val_set) == 4


def test_voc_spec_naming_one_split_is_refused_and_partial_overlap_too(tmp_path: Path) -> None:
    images = {name: [("cell", (1, 1, 20, 20), False)] for name in "abcd"}
    root = build_voc(tmp_path / "voc", images, {"train": ["a", "b", "c"], "val": ["d"], "trainval": list("abcd")})
    with pytest.raises(ValueError, match="names its split, so training and validation both read it"):
        DetectionDataModule(TrainConfig(data=f"voc:{root}:train", out=str(tmp_path / "r1"), **FAST)).setup("fit")
    with pytest.raises(ValueError, match="1 of the 1 validation images are also training images"):
        DetectionDataModule(TrainConfig(data=f"voc:{root}", train_split="trainval", out=str(tmp_path / "r2"),
                                        **FAST)).setup("fit")
    DetectionDataModule(TrainConfig(data=f"voc:{root}", out=str(tmp_path / "r3"), **FAST)).setup("fit")


def test_val_fraction_holds_out_a_seeded_split_written_to_the_run(tmp_path: Path) -> None:
    config = TrainConfig(data=_coco(tmp_path / "train", 10), val_fraction=0.2, out=str(tmp_path / "run"), **FAST)
    module = DetectionDataModule(config)
    module.setup("fit")
    saved = json.loads((tmp_path / "run" / "data_split.json").read_text())
    train_ids = {module.train_set.record(i).image_id for i in range(len(module.train_set))}
    val_ids = {module.val_set.record(i).image_id for i in range(len(module.val_set))}
    assert len(val_ids) == 2 and not train_ids & val_ids and len(train_ids) == 8
    assert sorted(val_ids) == saved["val_ids"] and saved["val_fraction"] == 0.2 and saved["seed"] == 0
    again = DetectionDataModule(config)
    again.setup("fit")
    assert {again.val_set.record(i).image_id for i in range(2)} == val_ids
    other = TrainConfig(data=config.data, val_fraction=0.3, out=config.out, **FAST)
    with pytest.raises(ValueError, match="holds a split of .* fraction 0.2"):
        DetectionDataModule(other).setup("fit")


def test_val_fraction_and_val_data_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(data="synthetic", val_data="synthetic", val_fraction=0.2)


def test_different_class_lists_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "val"
    images = [{"id": 9, "file_name": "x.jpg", "width": 64, "height": 48}]
    annotation_json, images_dir = build_coco(other, images, [], [{"id": 1, "name": "platelet"}])
    config = TrainConfig(data=_coco(tmp_path / "train"), val_data=f"coco:{annotation_json}:{images_dir}",
                         out=str(tmp_path / "run"), **FAST)
    with pytest.raises(ValueError, match=r"has the classes \['platelet'\].*has \['cell'\]"):
        DetectionDataModule(config).setup("fit")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("fpn_channels", "abc", "an integer"), ("lr", "fast", "a number"), ("progress_bar", "yes", "true or false"),
     ("lr_steps", ["x"], "a list of integers or null"), ("loss_options", 3, "a mapping"),
     ("data", True, "a string")],
)
def test_config_values_are_checked_against_their_types(key: str, value, expected: str) -> None:
    with pytest.raises(ValueError) as error:
        TrainConfig(**{key: value})
    assert str(error.value) == f"config key {key!r} must be {expected}, got {value!r} ({type(value).__name__})"


def test_config_values_are_converted_where_unambiguous() -> None:
    config = TrainConfig(lr=1, precision=32, epochs=3.0, limit_train_batches=0.5)
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.precision == "32"
    assert config.epochs == 3 and isinstance(config.epochs, int) and config.limit_train_batches == 0.5
