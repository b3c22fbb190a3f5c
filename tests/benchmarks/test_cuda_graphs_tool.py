"""benchmarks.cuda_graphs: the counts it cycles through, its records and its argument errors."""

from __future__ import annotations

import json

import pytest

from benchmarks import cuda_graphs
from detlosses.losses._graphs import capacity


@pytest.mark.parametrize("p", [2, 64, 100, 1000, 4000])
def test_positive_counts_differ_and_share_one_capacity(p):
    counts = cuda_graphs.positive_counts(p)
    assert counts[0] == p and len(set(counts)) == len(counts)
    assert {capacity(c) for c in counts} == {capacity(p)}


def test_writes_one_record_per_loss(tmp_path, capsys):
    out = tmp_path / "graphs.json"
    argv = ["--sizes", "3000x60", "--rounds", "1", "--losses", "ap,rank_sort", "--json", str(out)]
    assert cuda_graphs.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["loss"] for r in result["records"]] == ["ap", "rank_sort"]
    for r in result["records"]:
        assert r["p_max"] == 60 and r["p_min"] == 33
        assert r["graph_vs_focal"] == pytest.approx(r["graph_ms"] / r["focal_ms"])
        assert min(r["focal_ms"], r["eager_ms"], r["graph_first_call_ms"], r["graph_ms"]) > 0
    assert "| ap |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--sizes", "10x20"], ["--sizes", "abc"], ["--rounds", "0"], ["--losses", "x"]])
def test_bad_arguments_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cuda_graphs.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
