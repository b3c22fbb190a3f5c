"""Bytes each rank exchanges per step when the ranking losses rank the union of the ranks' batches.

Spawns ``--world`` gloo processes on this machine. Each holds a COCO-sized share of a RetinaNet
batch (``--images`` images x ``--anchors`` anchors x 80 classes, ~``--positives`` positive anchors
per image, logits near the prior) and runs forward + backward of every distributed-aware loss,
counting the payload of every collective (the ``torch.distributed`` collectives are wrapped by
:func:`count_collectives` for the duration of the measurement; the library itself keeps no counter).
For comparison: all-gathering the logits instead would move ``N x 4`` bytes per rank.

Usage::

    python -m benchmarks.distributed_communication --json benchmarks/results/communication.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import detlosses

CLASSES = 80
LOSSES = ("ap", "alrp", "rank_sort", "pap", "ghmc")
COMMUNICATION = {"sent": 0, "received": 0, "collectives": 0}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def count_collectives() -> None:
    """Wrap ``all_reduce``/``all_gather`` so that :data:`COMMUNICATION` counts their payload."""
    all_reduce, all_gather = dist.all_reduce, dist.all_gather

    def counted_all_reduce(tensor, *args, **kwargs):
        size = _nbytes([tensor])
        COMMUNICATION.update(sent=COMMUNICATION["sent"] + size, received=COMMUNICATION["received"] + size,
                             collectives=COMMUNICATION["collectives"] + 1)
        return all_reduce(tensor, *args, **kwargs)

    def counted_all_gather(tensor_list, tensor, *args, **kwargs):
        COMMUNICATION.update(sent=COMMUNICATION["sent"] + _nbytes([tensor]),
                             received=COMMUNICATION["received"] + _nbytes(tensor_list),
                             collectives=COMMUNICATION["collectives"] + 1)
        return all_gather(tensor_list, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = counted_all_reduce, counted_all_gather


def _losses(x, targets, ious, errors):
    iou_targets = torch.where(targets == 1, ious, targets.float())
    valid = (targets >= 0).float()
    return {
        "ap": lambda: detlosses.ap_loss(x, targets, distributed=True),
        "alrp": lambda: sum(detlosses.alrp_loss(x, targets, errors, distributed=True)),
        "rank_sort": lambda: sum(detlosses.rank_sort_loss(x, iou_targets, distributed=True)),
        "pap": lambda: detlosses.parameterized_ap_loss(x, targets, ious, distributed=True),
        "ghmc": lambda: detlosses.GHMC(distributed=True)(x.reshape(-1, CLASSES),
                                                         targets.clamp(min=0).reshape(-1, CLASSES).float(),
                                                         valid.reshape(-1, CLASSES)),
    }


def _worker(rank: int, world: int, init: str, spec: dict, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    count_collectives()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(rank)
    shape = (spec["images"], spec["anchors"], CLASSES)
    logits = -4.6 + 0.3 * torch.randn(shape, generator=g)
    targets = torch.zeros(shape, dtype=torch.long)
    count = spec["images"] * spec["positives"]
    flat = torch.randperm(targets.numel(), generator=g)[:count]
    targets.view(-1)[flat] = 1
    logits.view(-1)[flat] += 0.5
    ious = torch.rand(shape, generator=g)
    errors = torch.rand(count, generator=g)
    results = {}
    for name in LOSSES:
        x = logits.clone().requires_grad_(True)
        before = dict(COMMUNICATION)
        _losses(x, targets, ious, errors)[name]().backward()
        results[name] = {k: COMMUNICATION[k] - before[k] for k in COMMUNICATION}
    results["logits_per_rank"] = logits.numel()
    results["positives_per_rank"] = count
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        Path(result_file).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="images per rank")
    parser.add_argument("--anchors", type=int, default=100_000, help="anchors per image (RetinaNet 800x1333: ~120k)")
    parser.add_argument("--positives", type=int, default=150, help="positive anchors per image")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    spec = {"images": args.images, "anchors": args.anchors, "positives": args.positives}
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        mp.start_processes(_worker, args=(args.world, os.path.join(tmp, "init"), spec, result_file),
                           nprocs=args.world, start_method="spawn", join=True)
        ranks = json.loads(Path(result_file).read_text())
    n = ranks[0]["logits_per_rank"]
    print(f"{args.world} ranks x {args.images} images x {args.anchors:,} anchors x {CLASSES} classes "
          f"= {n:,} logits per rank, {ranks[0]['positives_per_rank']:,} positives per rank")
    print("| loss | collectives | sent per rank | received per rank | all-gather of the logits instead |")
    print("|---|---:|---:|---:|---:|")
    gather_all = n * 4 * (args.world - 1)
    rows = {}
    for name in LOSSES:
        stats = ranks[0][name]
        rows[name] = stats
        print(f"| {name} | {stats['collectives']} | {stats['sent'] / 1024:,.1f} KiB | "
              f"{stats['received'] / 1024:,.1f} KiB | {gather_all / 2**20:,.0f} MiB |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"spec": spec, "world": args.world, "logits_per_rank": n,
                                         "per_loss_rank0": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
