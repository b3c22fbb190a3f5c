"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

An interrupted run (crash, Ctrl-C, kill, full disk) never leaves a half-written file behind:
readers see either the previous complete file or the new one. Standard library only, so every
layer of the package (the loss layer included) can use it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_copy", "atomic_write", "atomic_write_text", "atomic_write_json"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Create ``path`` atomically: ``write`` fills a binary temp file in the same folder, which then
    replaces ``path``. Parent folders are created; the file gets mode 0644. Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
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


def atomic_write_json(payload: Any, path: str | os.PathLike[str], **dump_options: Any) -> Path:
    """Write ``payload`` as indented JSON (plus a newline) atomically; returns the path."""
    options = {"indent": 2, **dump_options}
    return atomic_write_text(path, json.dumps(payload, **options) + "\n")


def atomic_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy the file ``source`` to ``path`` atomically (contents only); returns the path."""

    def copy(handle: IO[bytes]) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle)

    return atomic_write(path, copy)
