"""Forward + backward time and peak memory of the ranking losses.

For every size (N logits, P positives) and ranking loss it measures, in one run:

* ``fast``: this library (:mod:`detlosses`, exact, no loop over positives);
* ``loop``: the per-positive loop form as released (:mod:`benchmarks.baselines`) — for sizes where
  the loop would take minutes, a few iterations are timed at two iteration counts and the
  affine fit ``t = a + b k`` is extrapolated to ``k = P`` (marked ``~`` in the table);
* ``focal``: ``torchvision.ops.sigmoid_focal_loss`` on the same logits (the floor we aim at).

Logits are drawn like early training: negatives near the prior ``log(0.01/0.99) = -4.6``,
positives slightly higher. Peak memory is the growth of the process's resident set during the
call (``/proc/self/clear_refs`` + ``VmHWM``; Linux only).

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
LOOP_BUDGET_S = 3.0  # run the loop in full only if its estimate is below this


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


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float | None]:
    """Median wall time of ``fn()`` over ``repeats`` runs and the peak extra memory (MiB)."""
    fn()  # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        base = _status_kib("VmRSS")
        tracked = base is not None and _reset_peak()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if tracked:
            peak = _status_kib("VmHWM")
            if peak is not None:
                peaks.append(max(peak - base, 0) / 1024.0)
    return statistics.median(times), (max(peaks) if peaks else None)


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
    """Time the released form in full when affordable, otherwise extrapolate from two limits."""
    k1, k2 = min(p, 2), min(p, 6)
    t1, m1 = measure(loop_call(name, b, k1), 1)
    if k1 == p:
        return {"seconds": t1, "peak_mib": m1, "estimated": False, "iterations": p}
    t2, m2 = measure(loop_call(name, b, k2), 1)
    slope = max((t2 - t1) / (k2 - k1), 0.0)
    estimate = t1 + slope * (p - k1)
    if estimate <= LOOP_BUDGET_S or k2 == p:
        seconds, peak = measure(loop_call(name, b, None), max(1, repeats // 2))
        return {"seconds": seconds, "peak_mib": peak, "estimated": False, "iterations": p}
    peak = m2
    if name == "pap" and m1 is not None and m2 is not None:  # the dense matrix grows with P
        peak = m1 + (m2 - m1) / (k2 - k1) * (p - k1)
    return {"seconds": estimate, "peak_mib": peak, "estimated": True, "iterations": k2}


# ---------------------------------------------------------------------------------------- driver
def run(sizes: str, losses: tuple[str, ...], repeats: int, include_loop: bool) -> dict:
    ns, ps = SIZES[sizes]
    records = []
    for n in ns:
        for p in ps:
            batch = make_batch(n, p)
            focal_s, focal_mib = measure(focal_call(batch), repeats)
            for name in losses:
                fast_s, fast_mib = measure(fast_call(name, batch), repeats)
                record = {
                    "loss": name, "N": n, "P": p,
                    "focal_s": focal_s, "focal_peak_mib": focal_mib,
                    "fast_s": fast_s, "fast_peak_mib": fast_mib,
                    "fast_over_focal": fast_s / focal_s,
                }
                if include_loop:
                    loop = measure_loop(name, batch, p, repeats)
                    record.update({
                        "loop_s": loop["seconds"], "loop_peak_mib": loop["peak_mib"],
                        "loop_estimated": loop["estimated"], "loop_iterations_timed": loop["iterations"],
                        "speedup_vs_loop": loop["seconds"] / fast_s,
                    })
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
    speed = f"{r['speedup_vs_loop']:,.0f}x" if "speedup_vs_loop" in r else "-"
    return (f"| {r['loss']} | {r['N']:,} | {r['P']:,} | {_fmt_ms(r['focal_s'])} | {_fmt_ms(r['fast_s'])} "
            f"| {r['fast_over_focal']:.2f} | {loop_ms} | {speed} | {_fmt_mib(r['focal_peak_mib'])} "
            f"| {_fmt_mib(r['fast_peak_mib'])} | {_fmt_mib(r.get('loop_peak_mib'))} |")


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
    args = parser.parse_args(argv)
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
