"""Forward + backward time and peak memory of the ranking losses.

For every size (N logits, P positives) and ranking loss it measures, in one run:

* ``fast``: this library (:mod:`detlosses`, exact, no loop over positives);
* ``loop``: the per-positive loop form as released (:mod:`benchmarks.baselines`) — for sizes where
  the loop would take minutes, a few iterations are timed at two iteration counts and the
  affine fit ``t = a + b k`` is extrapolated to ``k = P`` (marked ``~`` in the table);
* ``focal``: ``torchvision.ops.sigmoid_focal_loss`` on the same logits (the floor we aim at).

Logits are drawn like early training: negatives near the prior ``log(0.01/0.99) = -4.6``,
positives slightly higher. Times are medians measured in this process. Peak memory is measured
per size in a fresh probe process: the growth of its resident set during one call
(``/proc/self/clear_refs`` + ``VmHWM``, Linux only) with glibc returning every freed tensor to the
system; for the dense Parameterized AP form the memory of a few columns is scaled to ``P``.

Usage::

    python -m benchmarks.losses --sizes small
    python -m benchmarks.losses --sizes full --json benchmarks/results/losses.json --markdown out.md
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torchvision.ops import sigmoid_focal_loss

import detlosses
from benchmarks import baselines
from detlosses.losses.pap_params import PRESETS

PRIOR_LOGIT = math.log(0.01 / 0.99)
SIZES = {
    "small": ([100_000, 1_000_000], [10, 100, 1000]),
    "full": ([100_000, 1_000_000, 4_000_000, 16_000_000], [10, 100, 1000, 4000]),
}
LOSSES = ("ap", "alrp", "rank_sort", "pap")
LOOP_BUDGET_S = 10.0  # run the loop in full only if its estimate is below this


# ---------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, None]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), None


def peak_memory(fn: Callable[[], object]) -> float | None:
    """Growth of the resident set during ``fn()`` in MiB (meaningful in a probe process, see below)."""
    gc.collect()
    base = _status_kib("VmRSS")
    if base is None or not _reset_peak():
        return None
    fn()
    peak = _status_kib("VmHWM")
    return None if peak is None else max(peak - base, 0) / 1024.0


def memory_probe(n: int, p: int, losses: tuple[str, ...], loop_limits: dict[str, int | None]) -> dict:
    """Peak memory of every method for one size, measured in a fresh process.

    The probe runs with ``MALLOC_MMAP_THRESHOLD_`` small, so every tensor is its own mapping and
    is returned to the system when freed: the resident set then follows the live memory.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    payload = json.dumps({"n": n, "p": p, "losses": list(losses), "loop_limits": loop_limits})
    done = subprocess.run([sys.executable, "-m", "benchmarks.losses", "--memory-probe", payload],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        print(f"memory probe failed for N={n} P={p}: {done.stderr[-500:]}", file=sys.stderr)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_memory_probe(payload: str) -> None:
    spec = json.loads(payload)
    batch = make_batch(spec["n"], spec["p"])
    calls = {"focal": focal_call(batch)}
    for name in spec["losses"]:
        calls[f"fast:{name}"] = fast_call(name, batch)
        if name in spec["loop_limits"]:
            calls[f"loop:{name}"] = loop_call(name, batch, spec["loop_limits"][name])
    results = {}
    for key, fn in calls.items():
        fn()  # warm-up (imports, caches)
        results[key] = peak_memory(fn)
    print(json.dumps(results))


# ---------------------------------------------------------------------------------------- inputs
def make_batch(n: int, p: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = PRIOR_LOGIT + 0.3 * torch.randn(n, generator=g)
    pos = torch.randperm(n, generator=g)[:p]
    logits[pos] += 0.5 + 0.3 * torch.randn(p, generator=g)
    targets = torch.zeros(n, dtype=torch.long)
    targets[pos] = 1
    ignored = torch.randperm(n, generator=g)[: n // 100]
    ignored = ignored[targets[ignored] == 0]
    targets[ignored] = -1
    iou = torch.zeros(n)
    iou[pos] = 0.5 + 0.5 * torch.rand(p, generator=g)
    rs_targets = torch.where(targets == 1, iou, targets.float())
    loc_errors = torch.rand(p, generator=g)
    return {"logits": logits, "targets": targets, "ious": iou, "rs_targets": rs_targets, "loc_errors": loc_errors}


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


def fast_call(name: str, b: dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        x = _leaf(b["logits"])
        if name == "ap":
            loss = detlosses.ap_loss(x, b["targets"])
        elif name == "alrp":
            e = _leaf(b["loc_errors"])
            cls, loc = detlosses.alrp_loss(x, b["targets"], e)
            loss = cls + loc
        elif name == "rank_sort":
            r, s = detlosses.rank_sort_loss(x, b["rs_targets"])
            loss = r + s
        else:
            loss = detlosses.parameterized_ap_loss(x, b["targets"], _leaf(b["ious"]), params="retinanet")
        loss.backward()

    return run


def loop_call(name: str, b: dict[str, torch.Tensor], limit: int | None) -> Callable[[], None]:
    ctrl = PRESETS["retinanet"].control_points.float()

    def run() -> None:
        x = _leaf(b["logits"])
        if name == "ap":
            loss = baselines.APLossLoop.apply(x, b["targets"], 1.0, limit)
        elif name == "alrp":
            cls, loc = baselines.alrp_loss_loop(x, b["targets"], _leaf(b["loc_errors"]), limit=limit)
            loss = cls + loc
        elif name == "rank_sort":
            r, s = baselines.RankSortLoop.apply(x, b["rs_targets"], 0.5, 1e-10, limit)
            loss = r + s
        else:
            loss = baselines.pap_loss_dense(x, b["targets"], _leaf(b["ious"]), ctrl, limit=limit)
        loss.backward()

    return run


def focal_call(b: dict[str, torch.Tensor]) -> Callable[[], None]:
    targets = (b["targets"] == 1).float()

    def run() -> None:
        x = _leaf(b["logits"])
        sigmoid_focal_loss(x, targets, reduction="sum").backward()

    return run


def measure_loop(name: str, b: dict[str, torch.Tensor], p: int, repeats: int) -> dict:
    """Time the released form in full when affordable, otherwise extrapolate from two limits.

    Returns seconds, whether they are an estimate, and the limit to probe memory with (``None``:
    the full loop; for the dense Parameterized AP form the memory of ``k`` columns is scaled to P).
    """
    k1, k2 = min(p, 2), min(p, 12)
    t1, _ = measure(loop_call(name, b, k1), 2)
    if k1 == p:
        return {"seconds": t1, "estimated": False, "iterations": p, "limit": None}
    t2, _ = measure(loop_call(name, b, k2), 2)
    slope = max((t2 - t1) / (k2 - k1), 0.0)
    estimate = t1 + slope * (p - k1)
    if estimate <= LOOP_BUDGET_S or k2 == p:
        seconds, _ = measure(loop_call(name, b, None), max(1, repeats // 2))
        return {"seconds": seconds, "estimated": False, "iterations": p, "limit": None}
    return {"seconds": estimate, "estimated": True, "iterations": k2, "limit": k2}


# ---------------------------------------------------------------------------------------- driver
def run(sizes: str, losses: tuple[str, ...], base_repeats: int, include_loop: bool) -> dict:
    ns, ps = SIZES[sizes]
    records = []
    for n in ns:
        for p in ps:
            batch = make_batch(n, p)
            repeats = base_repeats if n > 1_000_000 else max(base_repeats, 7)
            focal_s, _ = measure(focal_call(batch), repeats)
            size_records, limits = [], {}
            for name in losses:
                fast_s, _ = measure(fast_call(name, batch), repeats)
                record = {"loss": name, "N": n, "P": p, "focal_s": focal_s, "fast_s": fast_s,
                          "fast_over_focal": fast_s / focal_s}
                if include_loop:
                    loop = measure_loop(name, batch, p, repeats)
                    limits[name] = loop["limit"]
                    record.update({
                        "loop_s": loop["seconds"], "loop_estimated": loop["estimated"],
                        "loop_iterations_timed": loop["iterations"],
                        "speedup_vs_loop": loop["seconds"] / fast_s,
                    })
                size_records.append(record)
            memory = memory_probe(n, p, losses, limits)
            for record in size_records:
                name = record["loss"]
                record["focal_peak_mib"] = memory.get("focal")
                record["fast_peak_mib"] = memory.get(f"fast:{name}")
                if include_loop:
                    loop_mib = memory.get(f"loop:{name}")
                    limit = limits.get(name)
                    if loop_mib is not None and limit is not None and name == "pap":
                        loop_mib = loop_mib * p / limit  # the dense |S| x P matrix grows with P
                    record["loop_peak_mib"] = loop_mib
                    record["loop_memory_estimated"] = limit is not None and name == "pap"
                records.append(record)
                print(_row(record), flush=True)
            del batch
            gc.collect()
    return {
        "benchmark": "losses",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.losses " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "dtype": "float32",
        "records": records,
    }


def _fmt_ms(seconds: float | None, estimated: bool = False) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    text = f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"
    return ("~" if estimated else "") + text


def _fmt_mib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib:,.0f}"


HEADER = ("| loss | N | P | focal ms | fast ms | fast / focal | loop ms | loop / fast "
          "| focal MiB | fast MiB | loop MiB |")


def _row(r: dict) -> str:
    loop_ms = _fmt_ms(r.get("loop_s"), r.get("loop_estimated", False))
    loop_mib = _fmt_mib(r.get("loop_peak_mib"))
    if r.get("loop_memory_estimated") and loop_mib != "-":
        loop_mib = "~" + loop_mib
    speed = f"{r['speedup_vs_loop']:,.0f}x" if "speedup_vs_loop" in r else "-"
    return (f"| {r['loss']} | {r['N']:,} | {r['P']:,} | {_fmt_ms(r['focal_s'])} | {_fmt_ms(r['fast_s'])} "
            f"| {r['fast_over_focal']:.2f} | {loop_ms} | {speed} | {_fmt_mib(r.get('focal_peak_mib'))} "
            f"| {_fmt_mib(r.get('fast_peak_mib'))} | {loop_mib} |")


def to_markdown(result: dict) -> str:
    lines = [HEADER, "|" + "---|" * 11]
    for name in LOSSES:
        lines += [_row(r) for r in result["records"] if r["loss"] == name]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of " + ",".join(LOSSES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the released loop form")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _run_memory_probe(args.memory_probe)
        return 0
    losses = tuple(s.strip() for s in args.losses.split(",") if s.strip())
    unknown = set(losses) - set(LOSSES)
    if unknown:
        parser.error(f"unknown losses {sorted(unknown)}; choose from {LOSSES}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are forward+backward medians")
    print(HEADER)
    print("|" + "---|" * 11)
    result = run(args.sizes, losses, args.repeats, not args.no_loop)
    print("\nSorted by loss:\n")
    print(to_markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(to_markdown(result))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
