"""Atomic writes leave either the old or the new file, never a partial one or a temp file."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from detlosses.reporting import atomic_write, atomic_write_text, save_figure


def test_write_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.md"
    assert atomic_write_text(path, "one\n") == path
    atomic_write_text(path, "two ρ\n")
    assert path.read_text(encoding="utf-8") == "two ρ\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]


def test_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    atomic_write_text(path, "complete\n")

    def half_then_fail(handle) -> None:
        handle.write(b"half a rep")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_save_figure_failure_leaves_nothing(tmp_path: Path) -> None:
    figure = Figure()
    figure.add_subplot().plot([0, 1], [0, 1])
    assert save_figure(figure, tmp_path / "ok.png").read_bytes()[:4] == b"\x89PNG"
    broken = Figure()

    def fail_midway(handle, **_kwargs) -> None:
        handle.write(b"\x89PNG partial")
        raise RuntimeError("renderer failed")

    broken.savefig = fail_midway  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="renderer failed"):
        save_figure(broken, tmp_path / "ok.png")
    assert (tmp_path / "ok.png").read_bytes()[:4] == b"\x89PNG"  # the previous complete file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]
