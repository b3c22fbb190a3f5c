"""This checkout's ranking losses against an earlier commit's, timed alternately on one machine.

Timings on a shared machine drift; comparing two engines measured minutes apart is unfair. This
script checks the earlier commit out into a temporary ``git worktree``, then for every size runs
fresh processes of both engines alternately (``--rounds`` times each) and reports the medians:
forward + backward of AP, aLRP, Rank & Sort and Parameterized AP against
``torchvision.ops.sigmoid_focal_loss``, inputs from :func:`benchmarks.losses.make_batch`.

Usage::

    python -m benchmarks.compare_engines --old-ref 3093034 --markdown engines.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOSSES = ("ap", "alrp", "rank_sort", "pap")
SIZES = ((100_000, 100), (1_000_000, 1000), (4_000_000, 1000), (16_000_000, 4000))
ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import gc, json, statistics, sys, time
from benchmarks.losses import fast_call, focal_call, make_batch
n, p, reps = (int(v) for v in sys.argv[1:4])
def median(fn):
    fn()
    times = []
    for _ in range(reps):
        gc.collect(); start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return statistics.median(times)
batch = make_batch(n, p)
out = {"focal": median(focal_call(batch))}
for name in LOSSES:
    out[name] = median(fast_call(name, batch))
print(json.dumps(out))
""".replace("LOSSES", repr(LOSSES))


def _probe(checkout: Path, n: int, p: int, reps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{checkout / 'src'}{os.pathsep}{checkout}")
    done = subprocess.run([sys.executable, "-c", _PROBE, str(n), str(p), str(reps)], cwd=checkout, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(old_ref: str, sizes=SIZES, rounds: int = 2) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), old_ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for n, p in sizes:
                reps = 9 if n <= 1_000_000 else 5
                runs = {"new": [], "old": []}
                for _ in range(rounds):
                    for engine, checkout in (("new", ROOT), ("old", old)):
                        runs[engine].append(_probe(checkout, n, p, reps))
                for engine, records in runs.items():
                    row = {"N": n, "P": p, "engine": engine,
                           "focal_ms": 1e3 * statistics.median(r["focal"] for r in records)}
                    for name in LOSSES:
                        row[f"{name}_ms"] = 1e3 * statistics.median(r[name] for r in records)
                        row[f"{name}_x"] = statistics.median(r[name] / r["focal"] for r in records)
                    rows.append(row)
                    print(_row(row, old_ref), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    return rows


def _row(r: dict, old_ref: str) -> str:
    engine = "this checkout" if r["engine"] == "new" else old_ref
    cells = [f"{r['N']:,}", f"{r['P']:,}", engine, f"{r['focal_ms']:.1f}"]
    cells += [f"{r[f'{name}_ms']:.1f} ({r[f'{name}_x']:.2f}x)" for name in LOSSES]
    return "| " + " | ".join(cells) + " |"


HEADER = "| N | P | engine | focal ms | AP | aLRP | Rank & Sort | Param. AP |\n|---|---|---|---|---|---|---|---|"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-ref", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each engine per size")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    print(HEADER)
    rows = compare(args.old_ref, rounds=args.rounds)
    if args.markdown:
        args.markdown.write_text(HEADER + "\n" + "\n".join(_row(r, args.old_ref) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
