"""The paired engine comparison runs both engines in one process and reports what it says.

Times are never asserted; the rows' shape and the interval around the paired difference are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import compare_engines  # noqa: E402


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout (an earlier commit to compare)")
def test_paired_comparison_times_every_loss_of_both_engines(capsys):
    rows = compare_engines.compare_paired("HEAD", sizes=((3000, 5),), reps=3)
    assert [r["loss"] for r in rows] == ["focal", "ap", "alrp", "rank_sort", "pap"]
    for r in rows:
        assert (r["N"], r["P"]) == (3000, 5)
        assert r["new"] > 0 and r["old"] > 0
        assert r["low"] <= r["diff"] <= r["high"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 5 and all(line.startswith("| 3,000 | 5 | ") for line in printed)


def test_paired_comparison_refuses_a_package_that_imports_itself_by_name(tmp_path):
    worktree = tmp_path / "old"
    package = worktree / "src" / "detlosses" / "losses"
    package.mkdir(parents=True)
    (worktree / "src" / "detlosses" / "__init__.py").write_text("from . import losses\n")
    (package / "__init__.py").write_text("from detlosses.ranking import engine\n")
    with pytest.raises(SystemExit, match="relative imports"):
        compare_engines._old_package(worktree, tmp_path / "packages")


def test_paired_main_writes_its_table(tmp_path, monkeypatch):
    seen = {}

    def fake(old_ref, reps, losses):
        seen.update(old_ref=old_ref, reps=reps, losses=losses)
        row = {"N": 100, "P": 1, "loss": "ap", "new": 1.0, "old": 1.5, "diff": -0.5, "low": -0.7, "high": -0.2}
        print(compare_engines._paired_row(row))
        return [row]

    monkeypatch.setattr(compare_engines, "compare_paired", fake)
    table = tmp_path / "paired.md"
    assert compare_engines.main(["--old-ref", "abc123", "--paired", "--reps", "7", "--markdown", str(table)]) == 0
    assert seen == {"old_ref": "abc123", "reps": 7, "losses": compare_engines.LOSSES}
    text = table.read_text()
    assert text.startswith(compare_engines.PAIRED_HEADER)
    assert "| 100 | 1 | ap | 1.00 | 1.50 | -0.500 [-0.700, -0.200] |" in text


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout (an earlier commit to compare)")
def test_paired_comparison_of_the_iou_balanced_loss(capsys):
    rows = compare_engines.compare_paired("HEAD", sizes=((4000, 5),), reps=3, losses=("iou_balanced",))
    assert [r["loss"] for r in rows] == ["focal", "iou_balanced"]
    assert all(r["new"] > 0 and r["old"] > 0 for r in rows)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout (an earlier commit to compare)")
def test_paired_comparison_of_criteria(capsys):
    """Criterion steps on a small fake RetinaNet batch: the null check (this checkout's focal criterion
    against itself), then each criterion of both engines."""
    rows = compare_engines.compare_paired("HEAD", sizes=((600, 2),), reps=3, losses=("focal", "pap"), criteria=True)
    assert [r["loss"] for r in rows] == ["null", "focal", "pap"]
    for r in rows:
        assert (r["N"], r["P"]) == (2 * 600 * 2, 2)
        assert r["new"] > 0 and r["old"] > 0 and r["low"] <= r["diff"] <= r["high"]


@pytest.mark.parametrize("argv, message", [
    (["--paired", "--losses", "ap,bogus"], "unknown"),
    (["--losses", "iou_balanced"], "need --paired"),
    (["--paired", "--criteria", "pap,bogus"], "unknown"),
    (["--criteria", "pap"], "need --paired"),
])
def test_losses_option_is_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare_engines.main(["--old-ref", "HEAD", *argv])
    assert message in capsys.readouterr().err
