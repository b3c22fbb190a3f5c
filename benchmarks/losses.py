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

``--device cuda`` runs the whole benchmark on the GPU: the inputs are drawn on the CPU with the
same generator (so the numbers are the CPU run's) and moved to the device, every timed call is
bracketed by ``torch.cuda.synchronize()``, and peak memory is ``torch.cuda.max_memory_allocated()``
above the memory allocated before the call (in this process; no probe process). The released
loops stay the baselines, as on the CPU. ``--sizes gpu`` is the issue's GPU grid
(N = 1e6 ... 1e8, P = 1000 / 4000). The default, ``--device cpu``, is the CPU benchmark as before.

Usage::

    python -m benchmarks.losses --sizes small
    python -m benchmarks.losses --sizes full --json benchmarks/results/losses.json --markdown out.md
    python -m benchmarks.losses --device cuda --sizes gpu --json benchmarks/results/losses_cuda.json
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
# explicit (N, P) grids, run in this order (the GPU table of issue 9)
SIZE_PAIRS = {
    "gpu": [(1_000_000, 1000), (10_000_000, 1000), (10_000_000, 4000), (100_000_000, 4000)],
}
SIZE_CHOICES = tuple(SIZES) + tuple(SIZE_PAIRS)
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


def _is_cuda(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def synchronize(device: str | torch.device | None) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], repeats: int, device: str | torch.device | None = None) -> tuple[float, None]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run).

    On CUDA every run is bracketed by ``torch.cuda.synchronize``, so the time includes the
    device's work, not only the host's launches.
    """
    fn()  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        gc.collect()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), None


def cuda_peak_memory(fn: Callable[[], object], device: str | torch.device) -> float:
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before it, in MiB."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - base, 0) / 2**20


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
def make_batch(n: int, p: int, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Early-training logits and targets for ``n`` elements with ``p`` positives (1% ignored).

    Drawn on the CPU (the same numbers for every device), then moved to ``device``.
    """
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
    batch = {"logits": logits, "targets": targets, "ious": iou, "rs_targets": rs_targets, "loc_errors": loc_errors}
    if torch.device(device).type != "cpu":
        batch = {k: v.to(device) for k, v in batch.items()}
    return batch


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


#: classes per anchor when a dense loss is called on the batch RetinaNet-shaped (``"iou_balanced"``)
ANCHOR_CLASSES = 20


def fast_call(name: str, b: dict[str, torch.Tensor], library=detlosses) -> Callable[[], None]:
    """One forward + backward of this library's loss ``name`` (``library``: another copy of the
    package, e.g. an earlier commit's for :mod:`benchmarks.compare_engines`).

    ``"iou_balanced"`` (IoU-balanced focal loss) sees the batch as a RetinaNet head does: anchors
    of :data:`ANCHOR_CLASSES` classes, one IoU per anchor (the largest of its elements');
    ``"iou_balanced_labels"`` gives it the same anchors' class indices instead of per-element
    targets (an anchor's first positive class; -2 where it holds an ignored entry; else -1), the
    form the IoU-balanced criterion uses."""
    if name.startswith("iou_balanced"):
        if b["logits"].numel() % ANCHOR_CLASSES:
            raise ValueError(f"{name} needs N divisible by {ANCHOR_CLASSES}, got {b['logits'].numel()}")
        shape = (-1, ANCHOR_CLASSES)
        anchor_targets, anchor_ious = b["targets"].view(shape), b["ious"].view(shape).amax(-1)
        if name == "iou_balanced_labels":
            positive = anchor_targets == 1
            anchor_targets = torch.where(positive.any(-1), positive.int().argmax(-1),
                                         torch.where((anchor_targets < 0).any(-1), -2, -1))

    def run() -> None:
        x = _leaf(b["logits"])
        if name.startswith("iou_balanced"):
            loss = library.iou_balanced_focal_loss(x.view(shape), anchor_targets, anchor_ious, reduction="sum")
        elif name == "ap":
            loss = library.ap_loss(x, b["targets"])
        elif name == "alrp":
            e = _leaf(b["loc_errors"])
            cls, loc = library.alrp_loss(x, b["targets"], e)
            loss = cls + loc
        elif name == "rank_sort":
            r, s = library.rank_sort_loss(x, b["rs_targets"])
            loss = r + s
        else:
            loss = library.parameterized_ap_loss(x, b["targets"], _leaf(b["ious"]), params="retinanet")
        loss.backward()

    return run


def loop_call(name: str, b: dict[str, torch.Tensor], limit: int | None) -> Callable[[], None]:
    ctrl = PRESETS["retinanet"].control_points.float().to(b["logits"].device)

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
    device = b["logits"].device
    k1, k2 = min(p, 2), min(p, 12)
    t1, _ = measure(loop_call(name, b, k1), 2, device)
    if k1 == p:
        return {"seconds": t1, "estimated": False, "iterations": p, "limit": None}
    t2, _ = measure(loop_call(name, b, k2), 2, device)
    slope = max((t2 - t1) / (k2 - k1), 0.0)
    estimate = t1 + slope * (p - k1)
    if estimate <= LOOP_BUDGET_S or k2 == p:
        seconds, _ = measure(loop_call(name, b, None), max(1, repeats // 2), device)
        return {"seconds": seconds, "estimated": False, "iterations": p, "limit": None}
    return {"seconds": estimate, "estimated": True, "iterations": k2, "limit": k2}


# ---------------------------------------------------------------------------------------- driver
def size_grid(sizes: str) -> list[tuple[int, int]]:
    """The (N, P) pairs of a ``--sizes`` choice, in run order."""
    if sizes in SIZE_PAIRS:
        return list(SIZE_PAIRS[sizes])
    ns, ps = SIZES[sizes]
    return [(n, p) for n in ns for p in ps]


def in_process_memory(n: int, p: int, batch: dict[str, torch.Tensor], losses: tuple[str, ...],
                      loop_limits: dict[str, int | None]) -> dict:
    """Peak CUDA memory of every method for one size (``memory_probe``'s keys), in this process."""
    device = batch["logits"].device
    calls = {"focal": focal_call(batch)}
    for name in losses:
        calls[f"fast:{name}"] = fast_call(name, batch)
        if name in loop_limits:
            calls[f"loop:{name}"] = loop_call(name, batch, loop_limits[name])
    results = {}
    for key, fn in calls.items():
        fn()  # warm-up (caches, lazy initialisation)
        results[key] = cuda_peak_memory(fn, device)
    return results


def device_description(device: str | torch.device) -> str:
    if _is_cuda(device):
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run(sizes: str, losses: tuple[str, ...], base_repeats: int, include_loop: bool,
        device: str | torch.device = "cpu") -> dict:
    records = []
    for n, p in size_grid(sizes):
        batch = make_batch(n, p, device=device)
        repeats = base_repeats if n > 1_000_000 else max(base_repeats, 7)
        focal_s, _ = measure(focal_call(batch), repeats, device)
        size_records, limits = [], {}
        for name in losses:
            fast_s, _ = measure(fast_call(name, batch), repeats, device)
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
        if _is_cuda(device):
            memory = in_process_memory(n, p, batch, losses, limits)
        else:
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
        if _is_cuda(device):
            torch.cuda.empty_cache()
    return {
        "benchmark": "losses",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.losses " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "device": str(torch.device(device)),
        "device_name": device_description(device),
        "memory": "torch.cuda.max_memory_allocated" if _is_cuda(device) else "resident set growth (probe process)",
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


def parse_losses_and_device(parser: argparse.ArgumentParser, losses_text: str, device_text: str,
                            known: tuple[str, ...]) -> tuple[tuple[str, ...], torch.device]:
    """The ``--losses`` list and the ``--device`` of a benchmark's command line (errors via ``parser``)."""
    losses = tuple(s.strip() for s in losses_text.split(",") if s.strip())
    unknown = set(losses) - set(known)
    if unknown:
        parser.error(f"unknown losses {sorted(unknown)}; choose from {known}")
    try:
        device = torch.device(device_text)
    except (RuntimeError, ValueError):
        parser.error(f"--device must be cpu or cuda[:index], got {device_text!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {device_text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return losses, device


def sizes_parser(doc: str, default_sizes: str, losses: tuple[str, ...]) -> argparse.ArgumentParser:
    """A command line with ``--sizes`` (``NxP`` pairs), ``--losses`` and ``--device``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--sizes", default=default_sizes, help="comma-separated NxP pairs (default %(default)s)")
    parser.add_argument("--losses", default=",".join(losses), help="comma-separated subset of " + ",".join(losses))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    return parser


def parse_size_pairs(parser: argparse.ArgumentParser, text: str, min_positives: int = 1) -> list[tuple[int, int]]:
    """``--sizes`` as comma-separated ``NxP`` pairs (``1e6x1000``); a bad value is one argparse error."""
    try:
        pairs = [tuple(int(float(v)) for v in pair.lower().split("x", 1)) for pair in text.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated NxP pairs such as 1000000x1000, got {text!r}")
    if any(len(pair) != 2 or pair[0] < 1 or not min_positives <= pair[1] <= pair[0] for pair in pairs):
        parser.error(f"--sizes: every pair needs {min_positives} <= P <= N, got {text!r}")
    return pairs


def add_cuda_graphs_switch(parser: argparse.ArgumentParser) -> None:
    """``--no-cuda-graphs``: time the ranking losses' eager path on CUDA (see :func:`apply_cuda_graphs_switch`)."""
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="run the ranking losses eagerly on CUDA (detlosses.set_cuda_graphs(False))")


def apply_cuda_graphs_switch(args: argparse.Namespace) -> str:
    """Apply ``--no-cuda-graphs``; returns the words for the header line."""
    import detlosses

    detlosses.set_cuda_graphs(not args.no_cuda_graphs)
    return "CUDA graphs off" if args.no_cuda_graphs else "CUDA graphs on"


def write_outputs(result: dict, json_path: Path | None, markdown_path: Path | None, to_markdown) -> None:
    """Write the records as JSON and the table as Markdown where asked (folders created)."""
    for path, text in ((json_path, lambda: json.dumps(result, indent=2) + "\n"),
                       (markdown_path, lambda: to_markdown(result))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text())
            print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=SIZE_CHOICES, default="small",
                        help="small/full: N x P products; gpu: the (N, P) pairs of the GPU table")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of " + ",".join(LOSSES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the released loop form")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    add_cuda_graphs_switch(parser)
    args = parser.parse_args(argv)
    graphs = apply_cuda_graphs_switch(args)
    if args.memory_probe:
        _run_memory_probe(args.memory_probe)
        return 0
    losses, device = parse_losses_and_device(parser, args.losses, args.device, LOSSES)
    where = device_description(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device} ({where}, {graphs}); times are forward+backward medians")
    print(HEADER)
    print("|" + "---|" * 11)
    result = run(args.sizes, losses, args.repeats, not args.no_loop, device)
    print("\nSorted by loss:\n")
    print(to_markdown(result))
    write_outputs(result, args.json, args.markdown, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
