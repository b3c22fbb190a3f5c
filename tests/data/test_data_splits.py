"""holdout_split and shared_images: seeded disjoint hold-outs, and which images two data sets share."""

from __future__ import annotations

from pathlib import Path

import pytest

from detlosses.data import SyntheticShapes, holdout_split, parse_data_spec, shared_images


def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    dataset = SyntheticShapes(20, 32, seed=1)
    train, val = holdout_split(dataset, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert not set(train) & set(val) and sorted(train + val) == list(range(1, 21))
    assert holdout_split(dataset, 0.2, seed=3) == (train, val)
    assert holdout_split(dataset, 0.2, seed=4) != (train, val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_holdout_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        holdout_split(SyntheticShapes(4, 32), fraction, 0)


def test_shared_images_of_files_and_synthetic_data(tmp_path: Path, voc_builder) -> None:
    images = {"a": [("cat", (1, 1, 5, 5), False)], "b": [], "c": []}
    root = voc_builder(tmp_path, images, {"train": ["a", "b"], "val": ["c"], "trainval": ["a", "b", "c"]})
    train = parse_data_spec(f"voc:{root}", "train")
    assert shared_images(train, parse_data_spec(f"voc:{root}", "val")) == 0
    assert shared_images(train, parse_data_spec(f"voc:{root}", "trainval")) == 2
    assert shared_images(train, parse_data_spec(f"voc:{root}:train", "val")) == 2
    synthetic_train = parse_data_spec("synthetic:images=6,size=32", "train")
    assert shared_images(synthetic_train, parse_data_spec("synthetic:images=6,size=32", "val")) == 0
    assert shared_images(synthetic_train, synthetic_train.subset([1, 2])) == 2
