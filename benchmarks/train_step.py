"""Time of one whole training step of a detector with each loss, next to focal loss's.

A loss is cheap enough when the *training step* it sits in costs about what focal loss's step costs.
This benchmark builds the same RetinaNet (same seed, same weights) once per loss, feeds it one
fixed synthetic batch (random images, random boxes and labels: the assignment, and so the number
of positives, is the same for every loss), and times ``zero_grad`` + forward (backbone, head,
assignment, criterion) + backward + SGD step, synchronised on CUDA. Median over ``--repeats`` steps
after ``--warmup`` steps; the ratio is to focal loss's median in the same run.

Two presets stand for the issue's two measurements:

* ``r50``: RetinaNet ResNet-50-FPN, 640 px, batch 8, 80 classes (the papers' setting, smaller);
* ``light``: RetinaNet MobileNetV2-FPN, 512 px, batch 8, 3 classes (BCCD's setting).

``--precision bf16-mixed`` / ``16-mixed`` runs the forward under ``torch.autocast`` (16-mixed with a
gradient scaler), as Lightning's mixed precision does. Times are never asserted anywhere; the
weights start from scratch (no download), which changes no cost.

Usage::

    python -m benchmarks.train_step --device cuda --preset r50 --json out.json --markdown out.md
    python -m benchmarks.train_step --preset light --image-size 256 --batch 2 --repeats 3   # CPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import detlosses
from benchmarks.losses import (
    add_cuda_graphs_switch,
    apply_cuda_graphs_switch,
    device_description,
    parse_losses_and_device,
    synchronize,
    write_outputs,
)
from detlosses.models import DetectorConfig, build_detector, build_model_criterion

LOSSES = ("focal", "ap", "alrp", "rank_sort", "pap", "ghm", "iou_balanced")
PRESETS = {
    "r50": dict(backbone="resnet50", image_size=640, batch=8, classes=80),
    "light": dict(backbone="mobilenet_v2", image_size=512, batch=8, classes=3),
}
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def make_batch(batch: int, image_size: int, classes: int, boxes_per_image: int, seed: int,
               device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``batch`` random images and ``boxes_per_image`` random boxes (5-50 % of the side) each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, image_size, image_size, generator=g).to(device))
        size = (0.05 + 0.45 * torch.rand(boxes_per_image, 2, generator=g)) * image_size
        corner = torch.rand(boxes_per_image, 2, generator=g) * (image_size - size)
        boxes = torch.cat([corner, corner + size], 1)
        labels = torch.randint(0, classes, (boxes_per_image,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def build(loss: str, backbone: str, image_size: int, classes: int, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    criterion = build_model_criterion("retinanet", loss)
    config = DetectorConfig(model="retinanet", backbone=backbone, num_classes=classes, image_size=image_size,
                            pretrained_backbone=False)
    return build_detector(config, criterion).to(device).train()


def step_time(loss: str, args: argparse.Namespace, device: torch.device,
              batch: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]) -> dict:
    model = build(loss, args.backbone, args.image_size, args.classes, args.seed, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    images, targets = batch

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            losses = model(images, targets)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        return losses["loss"]

    for _ in range(args.warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(args.repeats):
        synchronize(device)
        start = time.perf_counter()
        value = step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    final = float(value.detach())
    model = optimizer = step = None  # free the model before the next loss's is built
    if final != final:
        raise RuntimeError(f"{loss}: the loss is NaN after {args.warmup + args.repeats} steps")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"loss": loss, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "max_ms": 1e3 * max(times), "last_loss_value": final}


def run(args: argparse.Namespace, losses: tuple[str, ...], device: torch.device) -> dict:
    batch = make_batch(args.batch, args.image_size, args.classes, args.boxes, args.seed, device)
    records = []
    for loss in losses:
        record = step_time(loss, args, device, batch)
        records.append(record)
        print(f"  {loss:<13} {record['median_ms']:9.1f} ms", file=sys.stderr, flush=True)
    focal = next((r["median_ms"] for r in records if r["loss"] == "focal"), None)
    for record in records:
        record["vs_focal"] = None if focal is None else record["median_ms"] / focal
    return {
        "benchmark": "train_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "detlosses": detlosses.__version__,
        "torch": torch.__version__,
        "device": device_description(device) if device.type == "cuda" else
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "settings": {"model": "retinanet", "backbone": args.backbone, "image_size": args.image_size,
                     "batch": args.batch, "classes": args.classes, "boxes_per_image": args.boxes,
                     "precision": args.precision, "warmup": args.warmup, "repeats": args.repeats},
        "records": records,
    }


def to_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"RetinaNet {s['backbone']}-FPN, {s['image_size']} px, batch {s['batch']}, {s['classes']} classes, "
             f"{s['boxes_per_image']} boxes per image, precision {s['precision']}; {result['device']}"
             f"{'' if s.get('cuda_graphs', True) else ' (CUDA graphs off)'}, "
             f"torch {result['torch']}; median of {s['repeats']} steps after {s['warmup']}.",
             "", "| loss | step ms (median) | min | max | vs focal |", "|---|---|---|---|---|"]
    for r in result["records"]:
        ratio = "" if r["vs_focal"] is None else f"{r['vs_focal']:.2f}x"
        lines.append(f"| {r['loss']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="light")
    parser.add_argument("--backbone", choices=("resnet50", "resnet18", "mobilenet_v2"))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--classes", type=int)
    parser.add_argument("--boxes", type=int, default=6, help="ground-truth boxes per image")
    parser.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated subset of {','.join(LOSSES)}")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument("--precision", choices=PRECISIONS, default="32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    add_cuda_graphs_switch(parser)
    args = parser.parse_args(argv)
    apply_cuda_graphs_switch(args)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < 1 or args.image_size < 64 or args.classes < 1 or args.boxes < 1:
        parser.error("--batch, --classes and --boxes must be >= 1 and --image-size >= 64")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    losses, device = parse_losses_and_device(parser, args.losses, args.device, LOSSES)
    if "focal" not in losses:
        losses = ("focal", *losses)
    result = run(args, losses, device)
    result["settings"]["cuda_graphs"] = not args.no_cuda_graphs
    markdown = to_markdown(result)
    print(markdown)
    write_outputs(result, args.json, args.markdown, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
