"""Number formatting (percent, n/a) and Markdown tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detlosses.reporting.formatting import format_mean_std, format_percent, format_seconds, markdown_table


def test_numbers() -> None:
    assert format_percent(0.45678) == "45.7"
    assert format_percent(np.float32(0.5)) == "50.0"
    assert format_percent(None) == format_percent(math.nan) == format_percent(math.inf) == "n/a"
    assert format_mean_std(0.32, 0.0282842) == "32.0 ± 2.8"
    assert format_mean_std(math.nan, 0.1) == "n/a"
    assert format_mean_std(0.12, 0.0283, percent=False, decimals=4) == "0.1200 ± 0.0283"
    assert format_seconds(0.084213) == "0.08421 s" and format_seconds(None) == "n/a"
    with pytest.raises(TypeError, match="expected a number"):
        format_percent("0.3")


def test_markdown_table() -> None:
    text = markdown_table(["a", "b"], [["x|y", 1]])
    assert text == "| a | b |\n| :--- | ---: |\n| x\\|y | 1 |\n"
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
