"""Atomic file writes for reports: a temp file in the target's folder, then ``os.replace``.

An interrupted run (crash, Ctrl-C, full disk) therefore never leaves a half-written ``report.md``,
``comparison.json`` or PNG behind: readers see either the previous complete file or the new one. The
temp file is removed when writing fails.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from .._atomic import atomic_write, atomic_write_text

__all__ = ["DEFAULT_DPI", "atomic_write", "atomic_write_text", "save_figure"]

DEFAULT_DPI = 110
"""Resolution of every report PNG."""


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = DEFAULT_DPI) -> Path:
    """Render ``figure`` to a PNG at ``path`` atomically (Agg renderer, no pyplot state); returns the path."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
