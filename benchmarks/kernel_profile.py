"""Where one loss call's time goes: the device's busy time against the call's wall time, and the
operators that cost most.

For each loss and size, one warm forward + backward call (inputs of :func:`benchmarks.losses.make_batch`)
runs under ``torch.profiler``. Printed per call:

* ``wall``: the call's time, synchronised (what a training step pays);
* ``busy``: the sum of the device's kernel and copy times (on the CPU: of the top-level operators'
  own times), i.e. the work itself; ``wall - busy`` is the host issuing operators and waiting;
* the ``--top`` operators by device time (CPU: self CPU time).

``--late`` moves the negatives below every positive's window (late training: one crowded bucket);
``--lanes`` caps the engine's accumulation lanes (1: one table, atomic adds on its buckets);
``--spread`` gives the windows that many zero-weight edges below them on the device path (off by
default: ``detlosses.ranking.engine._SPREAD_EDGES``), which splits the late-training crowd.

It explains the numbers of :mod:`benchmarks.launches` and :mod:`benchmarks.losses`; nothing is
asserted. Usage::

    python -m benchmarks.kernel_profile --device cuda --sizes 1000000x1000,100000000x4000 --out profile.txt
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import detlosses
from benchmarks.losses import (
    add_cuda_graphs_switch,
    apply_cuda_graphs_switch,
    fast_call,
    focal_call,
    make_batch,
    parse_losses_and_device,
    parse_size_pairs,
    synchronize,
)
from detlosses.ranking import engine

#: the IoU-balanced focal loss RetinaNet-shaped (20 classes per anchor), per-element targets and
#: per-anchor class indices (:func:`benchmarks.losses.fast_call`)
LOSSES = ("focal", "ap", "alrp", "rank_sort", "pap", "ghm", "iou_balanced", "iou_balanced_labels")


def ghm_call(b: dict[str, torch.Tensor]):
    """GHM-C (default bins and momentum) on the same batch, as :mod:`benchmarks.launches` calls it."""
    loss = detlosses.GHMC().to(b["logits"].device)
    targets, weight = (b["targets"] == 1).float(), (b["targets"] >= 0).float()

    def run() -> None:
        x = b["logits"].clone().requires_grad_(True)
        loss(x, targets, weight).backward()

    return run


def wall_ms(fn, device: torch.device, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def profile_call(fn, device: torch.device, top: int) -> tuple[float, str]:
    """(device-busy ms, table of the top operators) of one warm call."""
    cuda = device.type == "cuda"
    fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    if cuda:
        busy_us = sum(e.device_time for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        sort = "self_cuda_time_total"
    else:
        busy_us = sum(e.self_cpu_time_total for e in events if e.name.startswith("aten::"))
        sort = "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=60)
    return busy_us / 1e3, table


def _report(args: argparse.Namespace, losses: tuple[str, ...], device: torch.device) -> list[str]:
    setting = f"{'late' if args.late else 'early'}-training logits, at most {engine._LANES} accumulation lanes"
    if engine._SPREAD_EDGES:
        setting += f", {engine._SPREAD_EDGES} spread edges"
    lines = []
    for n, p in args.pairs:
        batch = make_batch(n, p, device=device)
        if args.late:
            batch["logits"] = torch.where(batch["targets"] == 1, batch["logits"], batch["logits"] - 6.0)
        summary = []
        for name in losses:
            fn = focal_call(batch) if name == "focal" else ghm_call(batch) if name == "ghm" else fast_call(name, batch)
            wall = wall_ms(fn, device)
            busy, table = profile_call(fn, device, args.top)
            summary.append(f"| {n:.0e} | {p} | {name} | {wall:.2f} | {busy:.2f} | {wall - busy:.2f} |")
            lines += [f"## {name}, N = {n:.0e}, P = {p}, {setting}: wall {wall:.2f} ms, busy {busy:.2f} ms", table]
            print(lines[-2], flush=True)
        lines += [setting, "", "| N | P | loss | wall ms | busy ms | wall - busy |", "|---|---|---|---|---|---|",
                  *summary, ""]
        print("\n".join(lines[-len(summary) - 5:]), flush=True)
        del batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000x1000", help="comma-separated NxP pairs")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--late", action="store_true",
                        help="late-training logits: the negatives 6 lower (below every positive's window)")
    parser.add_argument("--lanes", type=int,
                        help="the most accumulation lanes the engine may use (1: one table; default: the engine's)")
    parser.add_argument("--spread", type=int, default=0,
                        help="zero-weight edges below the windows on the device path (default 0: none)")
    add_cuda_graphs_switch(parser)
    args = parser.parse_args(argv)
    apply_cuda_graphs_switch(args)
    losses, device = parse_losses_and_device(parser, args.losses, args.device, LOSSES)
    if args.lanes is not None and args.lanes < 1:
        parser.error("--lanes must be >= 1")
    if args.spread < 0:
        parser.error("--spread must be >= 0")
    args.pairs = parse_size_pairs(parser, args.sizes)
    lanes, spread = engine._LANES, engine._SPREAD_EDGES
    if args.lanes is not None:
        engine._LANES = args.lanes
    engine._SPREAD_EDGES = args.spread
    try:
        lines = _report(args, losses, device)
    finally:
        engine._LANES, engine._SPREAD_EDGES = lanes, spread  # the engine's settings are process-wide: put them back
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
