"""Exception and warning types raised while reading detection data sets."""

from __future__ import annotations


class DatasetError(ValueError):
    """A data set file is missing, unreadable or malformed.

    The message always names the offending file (and, for line-based formats such as YOLO, the line).
    """


class DroppedBoxesWarning(UserWarning):
    """Issued once per data set read when degenerate or out-of-image boxes were dropped."""
