"""BoxSanitizer: the clip-and-drop rule shared by all readers, as a property."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detlosses.data import DatasetError, DroppedBoxesWarning
from detlosses.data.box_sanitizer import BoxSanitizer

coordinate = st.floats(min_value=-200, max_value=200, allow_nan=False, width=32)
box = st.tuples(coordinate, coordinate, coordinate, coordinate)


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(box, max_size=12), width=st.integers(1, 120), height=st.integers(1, 120))
def test_kept_boxes_are_inside_and_non_degenerate(boxes, width, height) -> None:
    sanitizer = BoxSanitizer("property")
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(boxes), dtype=torch.int64)
    kept, kept_labels = sanitizer(tensor, labels, width=width, height=height, file="f.txt")
    assert kept.dtype == torch.float32 and kept.shape == (kept_labels.numel(), 4)
    assert ((kept[:, 0::2] >= 0) & (kept[:, 0::2] <= width)).all()
    assert ((kept[:, 1::2] >= 0) & (kept[:, 1::2] <= height)).all()
    assert (kept[:, 2:] > kept[:, :2]).all()
    assert kept_labels.numel() + sanitizer.num_dropped == len(boxes)
    for label, clipped in zip(kept_labels.tolist(), kept.tolist(), strict=True):
        x0, y0, x1, y1 = boxes[label]
        expected = [
            min(max(x0, 0), width),
            min(max(y0, 0), height),
            min(max(x1, 0), width),
            min(max(y1, 0), height),
        ]
        assert clipped == pytest.approx(expected)


def test_report_warns_once_only_when_something_was_dropped() -> None:
    sanitizer = BoxSanitizer("set")
    sanitizer(torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([0]), width=10, height=10, file="a.xml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sanitizer.report()  # nothing dropped yet: silent
    names = [f"f{i}.xml" for i in range(12)]
    for name in names:
        sanitizer(torch.tensor([[3.0, 3, 3, 9]]), torch.tensor([0]), width=10, height=10, file=name)
    with pytest.warns(
        DroppedBoxesWarning, match=r"set: dropped 12 invalid box.*f0\.xml.*\(2 more\)"
    ) as caught:
        sanitizer.report()
    assert len(caught) == 1


def test_non_finite_coordinates_raise_naming_the_file() -> None:
    with pytest.raises(DatasetError, match="bad.xml"):
        BoxSanitizer("set")(
            torch.tensor([[0.0, math.inf, 1, 1]]), torch.tensor([0]), width=4, height=4, file="bad.xml"
        )
