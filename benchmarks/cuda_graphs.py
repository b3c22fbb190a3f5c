"""The ranking losses with and without CUDA graphs, as training calls them: a different number of
positives on every call.

For each ``N x P`` and loss, calls cycle through batches whose numbers of positives all differ
(from ``P`` down to just above half of its graph capacity, so one graph serves them all) and
report forward + backward wall times (device synchronised around each call): sigmoid focal loss;
the eager path
(``detlosses.set_cuda_graphs(False)``); with graphs, the first call (which records the graph) and
the median of the later calls; and the memory the recorded graph keeps (CUDA memory reserved
after its calls minus before, caches emptied). On the CPU no graph is ever recorded: both columns are the eager path.

Usage::

    python -m benchmarks.cuda_graphs --device cuda --json out.json
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import detlosses
from benchmarks.losses import (
    device_description,
    fast_call,
    focal_call,
    make_batch,
    parse_losses_and_device,
    parse_size_pairs,
    sizes_parser,
    synchronize,
    write_outputs,
)
from detlosses.losses._graphs import capacity

LOSSES = ("ap", "alrp", "rank_sort", "pap")
DEFAULT_SIZES = "1000000x1000,10000000x1000,10000000x4000"
VARIANTS = 6


def positive_counts(p: int, variants: int = VARIANTS) -> list[int]:
    """Up to ``variants`` distinct counts from ``p`` down to just above half its graph capacity
    (so one recorded graph serves them all)."""
    low = min(p, capacity(p) // 2 + 1)
    counts = sorted({round(p - k * (p - low) / max(variants - 1, 1)) for k in range(variants)}, reverse=True)
    return counts


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _median_cycled(calls: list[Callable[[], None]], rounds: int, device: torch.device) -> float:
    return statistics.median(_timed(call, device) for _ in range(rounds) for call in calls)


def _reserved_mib(device: torch.device) -> float:
    """CUDA memory the caching allocator holds (cache emptied first), MiB; 0 on the CPU."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device) / 2**20


def run(pairs: list[tuple[int, int]], losses: tuple[str, ...], rounds: int, device: torch.device) -> dict:
    records = []
    for n, p in pairs:
        batches = [make_batch(n, count, seed=index, device=device) for index, count in enumerate(positive_counts(p))]
        focal = [focal_call(b) for b in batches]
        focal[0]()
        focal_ms = _median_cycled(focal, rounds, device)
        for name in losses:
            calls = [fast_call(name, b) for b in batches]
            detlosses.set_cuda_graphs(False)
            calls[0]()  # warm-up (caches)
            eager_ms = _median_cycled(calls, rounds, device)
            before = _reserved_mib(device)
            detlosses.set_cuda_graphs(True)  # nothing recorded yet
            first_ms = _timed(calls[0], device)
            graph_ms = _median_cycled(calls, rounds, device)
            record = {"n": n, "p_max": p, "p_min": min(positive_counts(p)), "loss": name, "focal_ms": focal_ms,
                      "eager_ms": eager_ms, "graph_first_call_ms": first_ms, "graph_ms": graph_ms,
                      "eager_vs_focal": eager_ms / focal_ms, "graph_vs_focal": graph_ms / focal_ms,
                      "graph_reserved_mib": _reserved_mib(device) - before}
            records.append(record)
            print(row(record), flush=True)
        del batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"torch": torch.__version__, "device": f"{device} ({device_description(device)})", "rounds": rounds,
            "records": records}


HEADER = ("| N | P (varies) | loss | focal ms | eager ms | x focal | graphs: first call ms | graphs ms | x focal "
          "| graph memory MiB |\n|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    return (f"| {r['n']:.0e} | {r['p_min']}-{r['p_max']} | {r['loss']} | {r['focal_ms']:.2f} | {r['eager_ms']:.2f} | "
            f"{r['eager_vs_focal']:.2f}x | {r['graph_first_call_ms']:.1f} | {r['graph_ms']:.2f} | "
            f"{r['graph_vs_focal']:.2f}x | {r['graph_reserved_mib']:.0f} |")


def to_markdown(result: dict) -> str:
    lines = [f"torch {result['torch']}, {result['device']}; forward + backward, median over {result['rounds']} "
             "rounds of batches with different numbers of positives", "", HEADER]
    lines += [row(r) for r in result["records"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = sizes_parser(__doc__, DEFAULT_SIZES, LOSSES)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the batches per measurement")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    losses, device = parse_losses_and_device(parser, args.losses, args.device, LOSSES)
    pairs = parse_size_pairs(parser, args.sizes, min_positives=2)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    print(f"torch {torch.__version__}, {device} ({device_description(device)})", file=sys.stderr)
    print(HEADER, flush=True)
    result = run(pairs, losses, args.rounds, device)
    write_outputs(result, args.json, args.markdown, to_markdown)
    detlosses.set_cuda_graphs(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
