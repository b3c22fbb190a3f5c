"""Atomic file writes for reports: a temp file in the target's folder, then ``os.replace``.

An interrupted run (crash, Ctrl-C, full disk) therefore never leaves a half-written ``report.md``,
``comparison.json`` or PNG behind: readers see either the previous complete file or the new one. The
temp file is removed when writing fails.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from matplotlib.figure import Figure

__all__ = ["DEFAULT_DPI", "atomic_write", "atomic_write_text", "save_figure"]

DEFAULT_DPI = 110
"""Resolution of every report PNG."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Create ``path`` atomically: ``write`` fills a binary temp file in the same folder, which then
    replaces ``path`` (``os.replace``). Parent folders are created; the file gets mode 0644.

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; reports are meant to be shared
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = DEFAULT_DPI) -> Path:
    """Render ``figure`` to a PNG at ``path`` atomically (Agg renderer, no pyplot state); returns the path."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
