"""The search's plots leave matplotlib's global backend alone (as the reporting package does)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_search_plots_keeps_the_backend() -> None:
    code = ("import matplotlib; before = matplotlib.get_backend(); import detlosses.search.plots; "
            "print(before, matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MPLBACKEND": "svg"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "svg"]
