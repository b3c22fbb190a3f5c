"""Every file the package writes goes through the one atomic-write module: the hub-cache copy of
pretrained weights and the merged training log included."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

import detlosses
from detlosses import _atomic
from detlosses.models import seed_torch_hub_cache
from detlosses.training.runner import _merge_csv_log

SRC = Path(detlosses.__file__).resolve().parent


def test_only_the_atomic_module_replaces_files() -> None:
    offenders = [str(path.relative_to(SRC)) for path in sorted(SRC.rglob("*.py"))
                 if path.name != "_atomic.py" and re.search(r"\bos\.replace\(|\.replace\(tmp", path.read_text())]
    assert offenders == []


def test_atomic_copy_copies_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(bytes(range(256)) * 100)
    target = _atomic.atomic_copy(source, tmp_path / "out" / "b.bin")
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.bin"]


def test_interrupted_atomic_copy_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"new contents")
    target = tmp_path / "b.bin"
    target.write_bytes(b"old contents")

    def broken(_src, dst, *args):
        dst.write(b"new")
        raise OSError("disk full")

    monkeypatch.setattr(_atomic.shutil, "copyfileobj", broken)
    with pytest.raises(OSError, match="disk full"):
        _atomic.atomic_copy(source, target)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_hub_cache_seeding_copies_atomically(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "net-1234.pth").write_bytes(b"weights" * 1000)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls = []
    monkeypatch.setattr("detlosses.models.weights.atomic_copy",
                        lambda src, dst: calls.append(Path(dst)) or _atomic.atomic_copy(src, dst))
    cached = seed_torch_hub_cache(weights)
    assert cached == [hub / "checkpoints" / "net-1234.pth"] and calls == cached
    assert cached[0].read_bytes() == (weights / "net-1234.pth").read_bytes()
    assert sorted(p.name for p in (hub / "checkpoints").iterdir()) == ["net-1234.pth"]
    seed_torch_hub_cache(weights)  # already there with the same size: not copied again
    assert len(calls) == 1


def test_merged_training_log_keeps_earlier_rows(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,train/loss\n2,10,0.5\n")  # what the resumed run logged
    earlier = [{"epoch": "0", "step": "4", "val/AP": "0.1"}, {"epoch": "1", "step": "9", "val/AP": "0.2"},
               {"epoch": "2", "step": "10", "val/AP": "0.3"}]  # epoch 2 was interrupted
    _merge_csv_log(log, earlier, last_epoch=1, global_step=10)
    with log.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["step"]) for row in rows] == [("0", "4"), ("1", "9"), ("2", "10")]
    assert rows[0]["val/AP"] == "0.1" and rows[2]["train/loss"] == "0.5" and rows[2]["val/AP"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
