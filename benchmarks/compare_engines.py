"""This checkout's ranking losses against an earlier commit's, timed alternately on one machine.

Timings on a shared machine drift; comparing two engines measured minutes apart is unfair. This
script checks the earlier commit out into a temporary ``git worktree``, then for every size runs
fresh processes of both engines alternately (``--rounds`` times each) and reports the medians:
forward + backward of AP, aLRP, Rank & Sort and Parameterized AP against
``torchvision.ops.sigmoid_focal_loss``, inputs from :func:`benchmarks.losses.make_batch`.

Between fresh processes the same code moves by 10-15 % at N = 1e5 on a shared machine, so
``--paired`` instead loads both engines into *one* process (the earlier commit's package copied
and imported as ``detlosses_old``) and calls them alternately, loss by loss, cold
(``gc.collect()`` before each call), each engine first in every other round: per loss the medians
and the median paired difference (per pair of rounds, so that the order cancels) with a bootstrap
90 % interval, which resolves differences of a few hundred microseconds. Focal loss is timed the
same way as a check of the method: its two "engines" are the same code.

``--paired --criteria`` times detector criteria the same way instead: one training step's loss
(``DenseAssignment`` + criterion + backward, :func:`benchmarks.launches.criterion_call`) on the
fake RetinaNet batches of :func:`benchmarks.launches.fake_detection_batch` (2 images x 20,000
anchors x 3 classes, and x 100,000 x 20); the method's check is this checkout's focal criterion
against itself (``null``).

Usage::

    python -m benchmarks.compare_engines --old-ref 3093034 --markdown engines.md
    python -m benchmarks.compare_engines --old-ref 3cc9b01 --paired --reps 61
    python -m benchmarks.compare_engines --old-ref 1264870 --paired --losses iou_balanced
    python -m benchmarks.compare_engines --old-ref 5c348a8 --paired --criteria focal,rank_sort,pap,ghm
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def _worktree(old_ref: str) -> Iterator[Path]:
    """``old_ref`` checked out in a temporary ``git worktree`` (removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), old_ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield old
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)


def compare(old_ref: str, sizes=SIZES, rounds: int = 2) -> list[dict]:
    rows = []
    with _worktree(old_ref) as old:
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
    return rows


_PAIRED_PROBE = """
import gc, json, random, statistics, sys, time
sys.path.insert(0, sys.argv[4])
import detlosses, detlosses_old
from benchmarks.losses import fast_call, focal_call, make_batch
n, p, reps = (int(v) for v in sys.argv[1:4])
reps += reps % 2  # rounds in pairs: each engine goes first once per pair
engines = (("new", detlosses), ("old", detlosses_old))
if sys.argv[6] == "criteria":  # n anchors, p classes, 2 images; null: the focal criterion against itself
    from benchmarks.launches import criterion_call, fake_detection_batch
    fake = fake_detection_batch(images=2, anchors=n, classes=p, positives=max(50, n // 400))
    names = ["null", *sys.argv[5].split(",")]
    null = criterion_call("focal", fake)
    calls = {(name, engine): null if name == "null" else criterion_call(name, fake, library)
             for name in names for engine, library in engines}
else:
    batch = make_batch(n, p)
    names = ["focal", *sys.argv[5].split(",")]
    focal = focal_call(batch)
    calls = {(name, engine): focal if name == "focal" else fast_call(name, batch, library)
             for name in names for engine, library in engines}
for call in calls.values():
    call(); call()
times = {key: [] for key in calls}
for rep in range(reps):
    for name in names:
        for engine in (("new", "old") if rep % 2 else ("old", "new")):
            call = calls[(name, engine)]
            gc.collect(); start = time.perf_counter(); call(); times[(name, engine)].append(time.perf_counter() - start)
rng = random.Random(0)
out = {}
for name in names:
    new, old = times[(name, "new")], times[(name, "old")]
    # per pair of rounds (either order once), so that going first or second cancels out
    diff = [(new[i] - old[i] + new[i + 1] - old[i + 1]) / 2 for i in range(0, reps, 2)]
    boot = sorted(statistics.median(rng.choices(diff, k=len(diff))) for _ in range(400))
    out[name] = {"new": statistics.median(new), "old": statistics.median(old), "diff": statistics.median(diff),
                 "low": boot[20], "high": boot[379]}
print(json.dumps(out))
"""

PAIRED_SIZES = ((100_000, 100), (1_000_000, 1000))
#: ``--criteria``: (anchors, classes) of the fake RetinaNet batches (2 images each)
CRITERIA_SIZES = ((20_000, 3), (100_000, 20))
CRITERIA = ("focal", "ap", "alrp", "rank_sort", "pap", "ghm", "iou_balanced")
#: what ``--paired`` can time: the ranking losses, and the IoU-balanced focal loss RetinaNet-shaped
#: (20 classes per anchor, one IoU per anchor: :func:`benchmarks.losses.fast_call`)
PAIRED_LOSSES = (*LOSSES, "iou_balanced")


def _old_package(worktree: Path, into: Path) -> Path:
    """The earlier commit's package copied as ``detlosses_old`` (its imports must be relative)."""
    target = into / "detlosses_old"
    shutil.copytree(worktree / "src" / "detlosses", target)
    for path in target.rglob("*.py"):
        if re.search(r"^\s*(from|import) detlosses\b", path.read_text(), re.MULTILINE):
            raise SystemExit(f"--paired needs relative imports inside the package; {path.name} of the "
                             "earlier commit imports detlosses by name (compare without --paired)")
    return into


def compare_paired(old_ref: str, sizes=PAIRED_SIZES, reps: int = 61, losses=LOSSES,
                   criteria: bool = False) -> list[dict]:
    """Both engines in one process, called alternately (see the module's docstring); ``losses``:
    any of :data:`PAIRED_LOSSES`, or with ``criteria`` any of :data:`CRITERIA` (``sizes`` are then
    (anchors, classes): rows carry ``N = 2 x anchors x classes`` and ``P = classes``)."""
    rows = []
    with _worktree(old_ref) as old:
        packages = _old_package(old, old.parent / "packages")
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
        for n, p in sizes:
            done = subprocess.run([sys.executable, "-c", _PAIRED_PROBE, str(n), str(p), str(reps), str(packages),
                                   ",".join(losses), "criteria" if criteria else "losses"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for name, r in result.items():
                row = {"N": 2 * n * p if criteria else n, "P": p, "loss": name, **{k: 1e3 * v for k, v in r.items()}}
                rows.append(row)
                print(_paired_row(row), flush=True)
    return rows


def _paired_row(r: dict) -> str:
    return (f"| {r['N']:,} | {r['P']:,} | {r['loss']} | {r['new']:.2f} | {r['old']:.2f} | "
            f"{r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] |")


PAIRED_HEADER = ("| N | P | loss | this checkout ms | earlier ms | paired difference ms [90% interval] |\n"
                 "|---|---|---|---|---|---|")


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
    parser.add_argument("--paired", action="store_true",
                        help="both engines in one process, called alternately (N = 1e5 and 1e6)")
    parser.add_argument("--reps", type=int, default=61, help="--paired: calls of each loss and engine per size")
    parser.add_argument("--losses", default=",".join(LOSSES),
                        help=f"--paired: comma-separated subset of {','.join(PAIRED_LOSSES)}")
    parser.add_argument("--criteria",
                        help=f"--paired: time detector criteria instead, a subset of {','.join(CRITERIA)}")
    args = parser.parse_args(argv)
    losses = tuple(name.strip() for name in args.losses.split(",") if name.strip())
    unknown = [name for name in losses if name not in PAIRED_LOSSES]
    if unknown or not losses:
        parser.error(f"--losses: unknown {unknown or 'empty list'}; choose from {','.join(PAIRED_LOSSES)}")
    if not args.paired and (losses != LOSSES or args.criteria):
        parser.error("--losses and --criteria need --paired (the fresh-process table has one column per ranking loss)")
    if args.criteria is not None:
        criteria = tuple(name.strip() for name in args.criteria.split(",") if name.strip())
        unknown = [name for name in criteria if name not in CRITERIA]
        if unknown or not criteria:
            parser.error(f"--criteria: unknown {unknown or 'empty list'}; choose from {','.join(CRITERIA)}")
        print(PAIRED_HEADER)
        rows = compare_paired(args.old_ref, sizes=CRITERIA_SIZES, reps=args.reps, losses=criteria, criteria=True)
        if args.markdown:
            args.markdown.write_text(PAIRED_HEADER + "\n" + "\n".join(_paired_row(r) for r in rows) + "\n")
        return 0
    if args.paired:
        print(PAIRED_HEADER)
        rows = compare_paired(args.old_ref, reps=args.reps, losses=losses)
        if args.markdown:
            args.markdown.write_text(PAIRED_HEADER + "\n" + "\n".join(_paired_row(r) for r in rows) + "\n")
        return 0
    print(HEADER)
    rows = compare(args.old_ref, rounds=args.rounds)
    if args.markdown:
        args.markdown.write_text(HEADER + "\n" + "\n".join(_row(r, args.old_ref) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
