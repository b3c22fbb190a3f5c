"""Operators, host synchronisations and (on CUDA) kernel launches of one loss call.

On a GPU a loss call costs what the host spends issuing operators and waiting for the device,
as soon as the work itself is small. This benchmark counts, for one warm forward + backward call
of each loss (``focal``, ``ap``, ``alrp``, ``rank_sort``, ``pap``, ``ghm``; inputs as
:func:`benchmarks.losses.make_batch` draws them), with ``torch.profiler``:

* **top-level operators**: profiler events whose name starts with ``aten::`` and that have no
  ``aten::`` ancestor, from the forward and the backward (including the operators autograd runs
  under ``autograd::engine::evaluate_function: ...``). Each is at least one dispatch, and on CUDA
  usually one or more kernel launches.
* **host synchronisations**: operators that, on CUDA, make the host wait for the device. Counted at
  any depth (a ``nonzero`` inside boolean-mask indexing still syncs), but an operator nested
  inside one already counted is not counted again (``aten::item`` -> ``_local_scalar_dense`` is
  one sync). The list:

  - ``aten::_local_scalar_dense``: ``Tensor.item()``, ``float()``, ``int()`` of a tensor (except
    the read of the value inside ``index_put_`` with a boolean mask, ``t[mask] = 0.5``: that
    dispatches to ``masked_fill_`` only for a one-element CPU value, a host read, no sync);
  - ``aten::is_nonzero``: ``bool()`` of a tensor (``if tensor:``);
  - ``aten::nonzero``: also inside boolean-mask indexing (``aten::index``, ``aten::index_put_``),
    ``torch.where(cond)``, ``argwhere`` (``nonzero_static`` does not sync and is not counted);
  - ``aten::masked_select``;
  - ``aten::unique*`` and ``aten::_unique*`` (``torch.unique``, ``unique_consecutive``);
  - ``aten::bincount``;
  - ``aten::repeat_interleave`` without ``output_size`` (recognised by the host read of the
    output size it contains, a nested ``aten::_local_scalar_dense``);
  - ``aten::equal`` (``torch.equal``);
  - device -> host copies: ``Tensor.cpu()``, ``Tensor.tolist()``, ``Tensor.numpy()``,
    ``Tensor.__array__`` and ``Tensor.to("cpu")`` (the device given as the string ``"cpu"``, or
    any CPU device for a tensor not on the CPU). On the CPU these are no profiler event (or an
    ``aten::to`` that does nothing), so they are counted by wrapping those ``torch.Tensor``
    methods during the measured call; they appear as ``Tensor.cpu`` etc. in ``sync_ops``.

* on CUDA (``--device cuda``) also: **kernel launches** (CUDA runtime launch calls such as
  ``cudaLaunchKernel`` seen by the profiler), **kernels** (device kernel events; copies and memsets
  excluded), **CUDA syncs** (runtime calls that block the host: ``cudaStreamSynchronize``,
  ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, blocking ``cudaMemcpy``), device -> host
  copies, and the median time of a call next to focal loss's (synchronised).

The counts are those of the **device path**: the operators a CUDA call runs. On the CPU the ranking
engine also has its own speed-ups (:func:`detlosses.ranking.engine.set_cpu_fast_paths`): large
batches (N >= 32k) are bucketed with a uniform grid (about 30 more small operators and a compaction
``nonzero`` that on the CPU reads nothing from a device) and the adjoint is evaluated in float32
with one ``take`` per power; the last column counts that CPU path as it runs by default. The leaves and
incoming gradients are made outside the measured call, so harness operators are not counted beyond
autograd's accumulation of each leaf's gradient.

Counts are taken on the second call (the first warms caches) and are deterministic for given
inputs. Every count is taken with input validation on (the default) and, when
``detlosses.set_validate_args`` exists, with it off. ``--criteria`` also counts the detector
criteria (:mod:`detlosses.models.criteria`) on a fake RetinaNet batch: one training step's
``DenseAssignment.from_matches`` + criterion + backward (+ ``extra_logs``).

The CPU count is a proxy: it flags an operator that *would* sync on CUDA. A ``.item()`` of a
tensor that lives on the host even in a CUDA run (a count built with ``torch.tensor(n)``) is
counted all the same; the CUDA columns (``cuda_syncs``) count what really blocked the host.

:func:`count_operators` is importable (``tests/benchmarks`` pins the counts)::

    count = count_operators(lambda: loss(x, t).backward())
    count.top_level, count.syncs, count.sync_ops

Usage::

    python -m benchmarks.launches                       # N = 1e6, P = 1000, CPU
    python -m benchmarks.launches --sizes 100000x100,1000000x1000 --json out.json --markdown out.md
    python -m benchmarks.launches --device cuda         # + kernel launches and time vs focal
    python -m benchmarks.launches --sizes 1e5x100 --criteria all
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torchvision.ops import sigmoid_focal_loss

import detlosses
from benchmarks.losses import (
    _leaf,
    add_cuda_graphs_switch,
    apply_cuda_graphs_switch,
    device_description,
    focal_call,
    make_batch,
    measure,
    parse_losses_and_device,
    sizes_parser,
    write_outputs,
)

LOSSES = ("focal", "ap", "alrp", "rank_sort", "pap", "ghm")
RANKING = ("ap", "alrp", "rank_sort", "pap")  # the losses with a CUDA-graph path
DEFAULT_SIZES = "1000000x1000"

# ------------------------------------------------------------------------------------- the lists
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "aten::nonzero",
    "aten::masked_select",
    "aten::bincount",
    "aten::equal",
})
SYNC_PREFIXES = ("aten::unique", "aten::_unique")
# repeat_interleave syncs only when it reads its output size on the host
CONDITIONAL_SYNC_OPS = frozenset({"aten::repeat_interleave"})
HOST_SCALAR_READ = "aten::_local_scalar_dense"
# torch.Tensor methods that copy device memory to the host (wrapped while counting)
HOST_READ_METHODS = ("cpu", "tolist", "numpy", "__array__", "to")
LAUNCH_EVENTS = frozenset({
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel", "cudaLaunchCooperativeKernelMultiDevice", "cudaGraphLaunch",
})
CUDA_SYNC_EVENTS = frozenset({
    "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
    "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpyDtoH_v2",
})


@dataclass(frozen=True)
class OperatorCount:
    """Counts of one profiled call (see the module docstring for the rules)."""

    top_level: int
    syncs: int
    sync_ops: dict[str, int] = field(default_factory=dict)
    top_level_ops: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    kernels: int | None = None
    launches: int | None = None
    cuda_syncs: int | None = None
    d2h_copies: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------- counting
def _is_aten(name: str) -> bool:
    return name.startswith("aten::")


def _has_aten_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _is_aten(parent.name):
            return True
        parent = parent.cpu_parent
    return False


def _subtree_has(event, name: str) -> bool:
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name == name:
            return True
        stack.extend(child.cpu_children)
    return False


def _is_masked_fill_dispatch(event) -> bool:
    """``index_put_`` with a boolean mask and a one-element value on the CPU (``t[mask] = 0.5``)
    runs ``masked_fill_(mask, value.item())``: the ``item`` reads a host scalar, no device sync."""
    parent = event.cpu_parent
    if parent is None or parent.name != "aten::item":
        return False
    grandparent = parent.cpu_parent
    return grandparent is not None and grandparent.name == "aten::_index_put_impl_"


def is_sync_event(event) -> bool:
    """Whether this profiler event is a host-synchronising operator (by itself)."""
    name = event.name
    if name == HOST_SCALAR_READ and _is_masked_fill_dispatch(event):
        return False
    if name in SYNC_OPS or name.startswith(SYNC_PREFIXES):
        return True
    if name in CONDITIONAL_SYNC_OPS:
        return _subtree_has(event, HOST_SCALAR_READ)
    return False


def _has_sync_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if is_sync_event(parent):
            return True
        parent = parent.cpu_parent
    return False


def _is_device_event(event) -> bool:
    device_type = getattr(event, "device_type", None)
    return device_type is not None and device_type != torch.autograd.DeviceType.CPU


def count_events(events: Iterable, host_reads: Counter | None = None) -> OperatorCount:
    """Counts from profiler ``FunctionEvent`` s (``prof.events()``) plus wrapped host reads."""
    top_level: Counter = Counter()
    syncs: Counter = Counter(host_reads or {})
    kernels = launches = cuda_syncs = d2h = 0
    saw_device = False
    for event in events:
        name = event.name
        if _is_device_event(event):
            saw_device = True
            if "DtoH" in name or "Device -> Pageable" in name or "Device -> Pinned" in name:
                d2h += 1
            if not (name.startswith("Memcpy") or name.startswith("Memset")):
                kernels += 1
            continue
        if name in LAUNCH_EVENTS:
            launches += 1
            saw_device = True
            continue
        if name in CUDA_SYNC_EVENTS:
            cuda_syncs += 1
            saw_device = True
            continue
        if not _is_aten(name):
            continue
        if not _has_aten_ancestor(event):
            top_level[name] += 1
        if is_sync_event(event) and not _has_sync_ancestor(event):
            syncs[name] += 1
    return OperatorCount(
        top_level=sum(top_level.values()),
        syncs=sum(syncs.values()),
        sync_ops=dict(sorted(syncs.items())),
        top_level_ops=dict(top_level.most_common()),
        kernels=kernels if saw_device else None,
        launches=launches if saw_device else None,
        cuda_syncs=cuda_syncs if saw_device else None,
        d2h_copies=d2h if saw_device else None,
    )


def _targets_cpu(tensor: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Whether ``tensor.to(*args, **kwargs)`` is a copy to the host (see the module docstring)."""
    candidates = list(args[:1]) + [kwargs.get("device")]
    for target in candidates:
        if isinstance(target, str) and target.split(":")[0] == "cpu":
            return True
        if isinstance(target, torch.device) and target.type == "cpu" and tensor.device.type != "cpu":
            return True
        if isinstance(target, torch.Tensor) and target.device.type == "cpu" and tensor.device.type != "cpu":
            return True
    return False


@contextlib.contextmanager
def count_host_reads() -> Iterator[Counter]:
    """Wrap the ``torch.Tensor`` methods that copy to the host; yields their call counter."""
    counts: Counter = Counter()
    originals = {name: torch.Tensor.__dict__.get(name) for name in HOST_READ_METHODS}
    depth = [0]  # a method calling another (cpu -> to) counts once

    def wrap(name: str, method: Callable) -> Callable:
        def wrapper(self, *args, **kwargs):
            if depth[0] == 0 and (name != "to" or _targets_cpu(self, args, kwargs)):
                counts[f"Tensor.{name}"] += 1
            depth[0] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        wrapper.__name__ = name
        wrapper.__doc__ = getattr(method, "__doc__", None)
        return wrapper

    for name in HOST_READ_METHODS:
        setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def count_operators(fn: Callable[[], object], *, warmup: bool = True, cuda: bool = False) -> OperatorCount:
    """Profile one call of ``fn`` (after a warm-up call) and count its operators and syncs.

    ``cuda=True`` also records the CUDA activity (kernel launches, kernels, CUDA syncs, copies).
    """
    if warmup:
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof, count_host_reads() as host_reads:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = list(prof.events())
    if cuda:  # drop the measurement's own closing torch.cuda.synchronize()
        own = [e for e in events if e.name == "cudaDeviceSynchronize" and e.cpu_parent is None]
        if own:
            last = max(own, key=lambda e: e.time_range.start)
            events = [e for e in events if e is not last]
    return count_events(events, host_reads)


# ------------------------------------------------------------------------------------- validation
@contextlib.contextmanager
def device_path(enabled: bool = True) -> Iterator[None]:
    """Count the operators a CUDA call runs: the CPU's own speed-ups
    (:func:`detlosses.ranking.engine.set_cpu_fast_paths`) off for the block when ``enabled``."""
    from detlosses.ranking.engine import set_cpu_fast_paths

    set_cpu_fast_paths(not enabled)
    try:
        yield
    finally:
        set_cpu_fast_paths(True)


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Input validation (:func:`detlosses.set_validate_args`) on or off for the block; on afterwards."""
    detlosses.set_validate_args(enabled)
    try:
        yield
    finally:
        detlosses.set_validate_args(True)


@contextlib.contextmanager
def simulated_graphs() -> Iterator[None]:
    """Count what the host runs on the CUDA-graph path (:mod:`detlosses.losses._graphs`) on any
    device: the static-shape path is forced, each shape's work runs once when it is "recorded", and
    later calls of that shape return copies of those outputs, as a replay of the same inputs would.
    For counting only: a call with other inputs would get the recorded call's values."""
    from detlosses.losses import _graphs

    class Simulated(_graphs._Recorded):
        def __init__(self, inputs, work) -> None:  # noqa: D107 - no recording: run the work once
            self.inputs, self.work, self._views = inputs, work, {}
            self.graph = "simulated"  # replayed by _replay below
            self.outputs = work(inputs)

        def _replay(self) -> None:  # the outputs stay those of the first call: counting only
            pass

    original = _graphs._Recorded
    _graphs._Recorded = Simulated
    _graphs.clear()
    try:
        with _graphs.force_static_shapes():
            yield
    finally:
        _graphs._Recorded = original
        _graphs.clear()


# ------------------------------------------------------------------------------------- calls
def _outputs(name: str, b: dict[str, torch.Tensor], x: torch.Tensor, inputs: dict) -> list[torch.Tensor]:
    """The differentiable outputs of one forward of loss ``name`` (each is backpropagated with 1)."""
    if name == "focal":
        return [sigmoid_focal_loss(x, inputs["focal_targets"], reduction="sum")]
    if name == "ghm":
        return [inputs["ghm"](x, inputs["focal_targets"], inputs["ghm_weight"])]
    if name == "ap":
        return [detlosses.ap_loss(x, b["targets"])]
    if name == "alrp":
        return list(detlosses.alrp_loss(x, b["targets"], inputs["errors"]))
    if name == "rank_sort":
        return list(detlosses.rank_sort_loss(x, b["rs_targets"]))
    if name == "pap":
        return [detlosses.parameterized_ap_loss(x, b["targets"], inputs["ious"], params="retinanet")]
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")


def loss_call(name: str, b: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One forward + backward of loss ``name`` on batch ``b``, and nothing else.

    The leaves (logits, and aLRP's errors / PAP's IoUs) and the incoming gradients are made once,
    outside the call, and every output is backpropagated with ``torch.autograd.backward``: what is
    counted is the loss (its forward, its backward) plus autograd's accumulation of each leaf's
    gradient (one operator per leaf).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
    x = _leaf(b["logits"])
    inputs = {
        "errors": _leaf(b["loc_errors"]),
        "ious": _leaf(b["ious"]),
        "focal_targets": (b["targets"] == 1).float(),
        "ghm_weight": (b["targets"] >= 0).float(),
        "ghm": detlosses.GHMC().to(b["logits"].device),
    }
    leaves = [x, inputs["errors"], inputs["ious"]]
    probe = _outputs(name, b, x, inputs)
    ones = [torch.ones_like(out) for out in probe]

    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        torch.autograd.backward(_outputs(name, b, x, inputs), ones)

    return run


def measure_loss(name: str, b: dict[str, torch.Tensor], validate: bool = True,
                 cpu_fast_paths: bool = False, graphs: bool = False) -> OperatorCount:
    """The counts of one warm call of loss ``name`` (validation on or off), on the device path
    (the operators a CUDA call runs) unless ``cpu_fast_paths`` (the CPU's own speed-ups on);
    ``graphs``: what the host runs when the call replays a CUDA graph (:func:`simulated_graphs`)."""
    fn = loss_call(name, b)
    with validation(validate), device_path(not cpu_fast_paths), (
            simulated_graphs() if graphs else contextlib.nullcontext()):
        return count_operators(fn, cuda=b["logits"].is_cuda)


# ------------------------------------------------------------------------------------- criteria
CRITERIA = ("focal", "ap", "alrp", "rank_sort", "pap", "ghm", "iou_balanced")


def fake_detection_batch(images: int = 2, anchors: int = 20_000, classes: int = 3, objects: int = 4,
                         positives: int = 50, seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """What a RetinaNet head hands its criterion: targets, head outputs, anchors, matcher results.

    ``positives`` anchors per image are matched to an object (anchors near its box), 2 % are
    ignored (``-2``) and the rest background (``-1``); the head outputs are leaves.
    """
    from torchvision.models.detection._utils import BoxCoder

    g = torch.Generator().manual_seed(seed)
    size = 512.0
    xy = torch.rand(images, anchors, 2, generator=g) * (size - 64)
    anchor_boxes = torch.cat([xy, xy + 16 + 48 * torch.rand(images, anchors, 2, generator=g)], dim=-1)
    targets, matched = [], []
    for b in range(images):
        obj_xy = torch.rand(objects, 2, generator=g) * (size - 128)
        boxes = torch.cat([obj_xy, obj_xy + 32 + 64 * torch.rand(objects, 2, generator=g)], dim=1)
        labels = torch.randint(0, classes, (objects,), generator=g)
        idx = torch.full((anchors,), -1, dtype=torch.long)
        order = torch.randperm(anchors, generator=g)
        pos, ign = order[:positives], order[positives: positives + anchors // 50]
        idx[pos] = torch.randint(0, objects, (positives,), generator=g)
        idx[ign] = -2
        # positive anchors: their object's box, jittered
        anchor_boxes[b, pos] = boxes[idx[pos]] + 4 * torch.randn(positives, 4, generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
        matched.append(idx.to(device))
    from math import log

    head = {
        "cls_logits": (log(0.01 / 0.99) + 0.5 * torch.randn(images, anchors, classes, generator=g)).to(device),
        "bbox_regression": (0.1 * torch.randn(images, anchors, 4, generator=g)).to(device),
    }
    return {"targets": targets, "head": head, "anchors": [a.to(device) for a in anchor_boxes], "matched": matched,
            "box_coder": BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))}


def criterion_call(name: str, fake: dict, library=None, **options) -> Callable[[], None]:
    """One training step's loss: ``DenseAssignment.from_matches`` + the criterion + backward
    (``library``: another copy of the package, e.g. an earlier commit's for
    :mod:`benchmarks.compare_engines`)."""
    if library is None:
        from detlosses.models import DenseAssignment, build_criterion
    else:
        models = importlib.import_module(f"{library.__name__}.models")  # (a subpackage imported on demand)
        DenseAssignment, build_criterion = models.DenseAssignment, models.build_criterion

    criterion = build_criterion(name, **options).to(fake["head"]["cls_logits"].device).train()

    def run() -> None:
        head = {k: _leaf(v) for k, v in fake["head"].items()}
        batch = DenseAssignment.from_matches(fake["targets"], head, fake["anchors"], fake["matched"],
                                             fake["box_coder"])
        losses = criterion(batch)
        losses["loss"].backward()
        criterion.extra_logs()

    return run


def measure_criterion(name: str, fake: dict, validate: bool = True) -> OperatorCount:
    """The counts of one warm training-step loss of detector criterion ``name`` (device path)."""
    fn = criterion_call(name, fake)
    with validation(validate), device_path(True):
        return count_operators(fn, cuda=fake["head"]["cls_logits"].is_cuda)


# ------------------------------------------------------------------------------------- driver
def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1000000x1000,1e5x100"`` -> ``[(1000000, 1000), (100000, 100)]``."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        n, _, p = item.lower().partition("x")
        pairs.append((int(float(n)), int(float(p))))
    return pairs


def run(sizes: list[tuple[int, int]], losses: tuple[str, ...], device: str | torch.device = "cpu",
        repeats: int = 20) -> dict:
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    records = []
    for n, p in sizes:
        batch = make_batch(n, p, device=device)
        focal_s = None
        for name in losses:
            on = measure_loss(name, batch, validate=True)
            off = measure_loss(name, batch, validate=False)
            grid = measure_loss(name, batch, cpu_fast_paths=True) if not on_cuda else on
            graph = measure_loss(name, batch, graphs=True) if name in RANKING else None
            record = {"loss": name, "N": n, "P": p, "validate": on.as_dict(),
                      "no_validate": off.as_dict() if off is not None else None, "cpu_fast_paths": grid.as_dict(),
                      "cuda_graph_path": graph.as_dict() if graph is not None else None}
            if on_cuda:
                seconds, _ = measure(loss_call(name, batch), repeats, device)
                if name == "focal":
                    focal_s = seconds
                elif focal_s is None:
                    focal_s, _ = measure(focal_call(batch), repeats, device)
                record.update({"seconds": seconds, "focal_s": focal_s, "over_focal": seconds / focal_s})
            records.append(record)
            print(_row(record), flush=True)
        del batch
    return {
        "benchmark": "launches",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.launches " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_description(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "dtype": "float32",
        "sync_ops_counted": sorted(SYNC_OPS | CONDITIONAL_SYNC_OPS) + [p + "*" for p in SYNC_PREFIXES]
        + [f"Tensor.{m}" for m in HOST_READ_METHODS],
        "records": records,
    }


def run_criteria(names: tuple[str, ...], device: str | torch.device = "cpu") -> list[dict]:
    """Counts of each detector criterion on :func:`fake_detection_batch` (validation on)."""
    fake = fake_detection_batch(device=device)
    records = []
    for name in names:
        count = measure_criterion(name, fake)
        records.append({"criterion": name, "counts": count.as_dict()})
        print(_criterion_row(records[-1]), flush=True)
    return records


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _sync_names(count: dict) -> str:
    return ", ".join(f"{k.removeprefix('aten::')} {v}" for k, v in count["sync_ops"].items()) or "-"


def header(cuda: bool) -> list[str]:
    cols = ["loss", "N", "P", "top-level ops", "syncs", "ops (no validation)", "syncs (no validation)",
            "sync operators", "ops / syncs on the CPU's fast path", "ops / syncs replaying a CUDA graph"]
    if cuda:
        cols += ["kernel launches", "kernels", "CUDA syncs", "ms", "x focal"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _row(r: dict) -> str:
    on, off = r["validate"], r["no_validate"] or {}
    grid = r.get("cpu_fast_paths") or on
    cells = [r["loss"], f"{r['N']:,}", f"{r['P']:,}", _fmt(on["top_level"]), _fmt(on["syncs"]),
             _fmt(off.get("top_level")), _fmt(off.get("syncs")), _sync_names(on),
             f"{grid['top_level']} / {grid['syncs']}",
             "-" if not r.get("cuda_graph_path") else f"{r['cuda_graph_path']['top_level']} / "
             f"{r['cuda_graph_path']['syncs']}"]
    if "seconds" in r:
        cells += [_fmt(on.get("launches")), _fmt(on.get("kernels")), _fmt(on.get("cuda_syncs")),
                  f"{r['seconds'] * 1e3:.2f}", f"{r['over_focal']:.2f}"]
    return "| " + " | ".join(cells) + " |"


CRITERIA_HEADER = ["| criterion | top-level ops | syncs | sync operators |", "|---|---|---|---|"]


def _criterion_row(r: dict) -> str:
    c = r["counts"]
    return f"| {r['criterion']} | {c['top_level']} | {c['syncs']} | {_sync_names(c)} |"


def to_markdown(result: dict) -> str:
    cuda = result["device"].startswith("cuda")
    lines = header(cuda) + [_row(r) for r in result["records"]]
    if result.get("criteria"):
        lines += [""] + CRITERIA_HEADER + [_criterion_row(r) for r in result["criteria"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = sizes_parser(__doc__, DEFAULT_SIZES, LOSSES)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per loss on CUDA")
    parser.add_argument("--criteria", default="", help="also count the detector criteria (comma-separated, or 'all')"
                        " on a fake RetinaNet batch: assignment + criterion + backward")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    add_cuda_graphs_switch(parser)
    args = parser.parse_args(argv)
    graphs = apply_cuda_graphs_switch(args)
    losses, device = parse_losses_and_device(parser, args.losses, args.device, LOSSES)
    if "focal" not in losses and device.type == "cuda":
        print("note: times are relative to focal loss, measured anyway", file=sys.stderr)
    print(f"torch {torch.__version__}, {device} ({device_description(device)}, {graphs}); one warm forward + backward "
          "call per loss; counts with input validation on and off (detlosses.set_validate_args)")
    print("\n".join(header(device.type == "cuda")))
    result = run(parse_sizes(args.sizes), losses, device, args.repeats)
    criteria = CRITERIA if args.criteria == "all" else tuple(c for c in args.criteria.split(",") if c)
    if criteria:
        print("\n" + "\n".join(CRITERIA_HEADER))
        result["criteria"] = run_criteria(criteria, device)
    write_outputs(result, args.json, args.markdown, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
