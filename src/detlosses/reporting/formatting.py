"""Number and Markdown formatting shared by the run report and the loss comparison.

Conventions: metric values are fractions; AP-type and LRP-type values are shown as percentages with
one decimal. A missing value (``None``, as NaN is written to JSON) or NaN is shown as ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NA",
    "as_float",
    "escape_cell",
    "format_mean_std",
    "format_number",
    "format_percent",
    "format_seconds",
    "markdown_table",
]

NA = "n/a"
"""How a missing or undefined value is written."""


def as_float(value: Any) -> float:
    """``value`` as a float; ``None`` (NaN in JSON) becomes NaN.

    Raises:
        TypeError: when ``value`` is not a number (e.g. a string or a dict).
    """
    if value is None:
        return math.nan
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
        raise TypeError(f"expected a number, got {type(value).__name__}: {value!r}")
    return float(value)


def format_percent(value: Any, decimals: int = 1) -> str:
    """A fraction as a percentage (``0.4567 -> "45.7"``); ``n/a`` for None/NaN/inf."""
    x = as_float(value)
    return f"{100.0 * x:.{decimals}f}" if math.isfinite(x) else NA


def format_number(value: Any, decimals: int = 3) -> str:
    """A float with ``decimals`` decimals; ``n/a`` for None/NaN/inf."""
    x = as_float(value)
    return f"{x:.{decimals}f}" if math.isfinite(x) else NA


def format_seconds(value: Any) -> str:
    """Seconds with 4 significant digits (``0.01234 -> "0.01234 s"``); ``n/a`` for None/NaN/inf."""
    x = as_float(value)
    return f"{x:.4g} s" if math.isfinite(x) else NA


def format_mean_std(mean: Any, std: Any, *, percent: bool = True, decimals: int = 1) -> str:
    """``"mean ± std"``, in percent when ``percent``; ``n/a`` if the mean is undefined."""
    m, s = as_float(mean), as_float(std)
    if not math.isfinite(m):
        return NA
    scale = 100.0 if percent else 1.0
    if not math.isfinite(s):
        return f"{scale * m:.{decimals}f} ± {NA}"
    return f"{scale * m:.{decimals}f} ± {scale * s:.{decimals}f}"


def escape_cell(text: Any) -> str:
    """``text`` made safe for one Markdown table cell (pipes escaped, line breaks removed)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; cells are escaped with :func:`escape_cell`.

    Args:
        header: column titles.
        rows: one sequence of cells per row, each as long as ``header``.
        align: per column ``"l"``, ``"r"`` or ``"c"`` (default: first column left, the others right).

    Raises:
        ValueError: when a row or ``align`` does not have one entry per column.
    """
    n = len(header)
    if align is None:
        align = ["l"] + ["r"] * (n - 1)
    if len(align) != n:
        raise ValueError(f"align has {len(align)} entries for {n} columns")
    rules = {"l": ":---", "r": "---:", "c": ":---:"}
    try:
        rule = [rules[a] for a in align]
    except KeyError as error:
        raise ValueError(f"align entries must be 'l', 'r' or 'c', got {error.args[0]!r}") from None
    lines = ["| " + " | ".join(escape_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells for {n} columns: {list(row)!r}")
        lines.append("| " + " | ".join(escape_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"
