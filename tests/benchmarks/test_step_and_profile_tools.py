"""The training-step and kernel-profile benchmarks run end to end on the CPU and write what they say.

Times are never asserted; the records' shape and the ratios' definition are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import kernel_profile, train_step  # noqa: E402


def test_train_step_writes_one_record_per_loss_with_ratios_to_focal(tmp_path, capsys):
    out, table = tmp_path / "step.json", tmp_path / "step.md"
    assert train_step.main(["--image-size", "64", "--batch", "1", "--boxes", "2", "--repeats", "1",
                            "--warmup", "0", "--losses", "ap,ghm", "--json", str(out),
                            "--markdown", str(table)]) == 0
    result = json.loads(out.read_text())
    records = {r["loss"]: r for r in result["records"]}
    assert list(records) == ["focal", "ap", "ghm"]  # focal added first: the reference
    assert records["focal"]["vs_focal"] == 1.0
    for r in records.values():
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["vs_focal"] == pytest.approx(r["median_ms"] / records["focal"]["median_ms"])
        assert r["last_loss_value"] == r["last_loss_value"]  # finite, checked by the tool itself
    assert result["settings"] == {"model": "retinanet", "backbone": "mobilenet_v2", "image_size": 64, "batch": 1,
                                  "classes": 3, "boxes_per_image": 2, "precision": "32", "warmup": 0,
                                  "repeats": 1, "cuda_graphs": True}
    assert "| ap |" in table.read_text() and "| ap |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--image-size", "32"], ["--losses", "focal,nope"],
                                  ["--device", "tpu"]])
def test_train_step_refuses_bad_arguments_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_step.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--sizes", "1e5"], ["--sizes", "10x20"], ["--lanes", "0"], ["--losses", "x"]])
def test_kernel_profile_refuses_bad_arguments_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        kernel_profile.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_kernel_profile_reports_every_loss_with_wall_and_busy_times(tmp_path):
    out = tmp_path / "profile.txt"
    lanes = kernel_profile.engine._LANES
    names = ("focal", "ap", "ghm", "iou_balanced", "iou_balanced_labels")
    assert kernel_profile.main(["--sizes", "3000x20", "--losses", ",".join(names), "--top", "3", "--lanes", "1",
                                "--late", "--out", str(out)]) == 0
    text = out.read_text()
    for name in names:
        assert f"## {name}, N = 3e+03, P = 20, late-training logits, at most 1 accumulation lanes: wall" in text
    rows = [line for line in text.splitlines() if line.startswith("| 3e+03 |")]
    assert len(rows) == len(names)
    for row in rows:
        wall, busy = (float(v) for v in row.strip("|").split("|")[3:5])
        assert wall > 0 and busy > 0
    assert kernel_profile.engine._LANES == lanes  # the process-wide setting is put back


def test_kernel_profile_spread_edges_are_named_and_put_back(tmp_path):
    out = tmp_path / "profile.txt"
    assert kernel_profile.main(["--sizes", "40000x20", "--losses", "ap", "--top", "3", "--late", "--spread", "256",
                                "--out", str(out)]) == 0
    assert "late-training logits, at most 1024 accumulation lanes, 256 spread edges: wall" in out.read_text()
    assert kernel_profile.engine._SPREAD_EDGES == 0
