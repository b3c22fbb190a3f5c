"""CUDA graphs of the ranking path after its one host read.

On a GPU a ranking loss is bound by the host at the sizes detectors train with (N = 1e6-1e7
logits): the device works ~0.6 ms of a ~4 ms call while the host issues 60-150 small operators
(measured on an H100; ``docs/benchmarks.md``). Everything after the number of positives is read
back — the windows, the bucketing, the sums, the formula, the gradients (:func:`._ranking.ranked`)
— has shapes fixed by ``N`` and that number, so it can be recorded once as a CUDA graph and
replayed with one launch.

The number of positives changes every step, so the graph is recorded for a *capacity*: the next
power of two (at least 64). The positives fill the first slots; the rest repeat the first positive
and are masked out of every sum, mean and gradient (:class:`._ranking.RankingBatch`). A training
run records one graph per capacity it meets (a handful), and every later call with those shapes
replays one. Inputs are copied into buffers the graph reads (shared by the graphs of one ``N``),
outputs are copied out of it, so calls never share memory. The graph reads the scores, the
negatives' mask and per-positive values, not the targets (an int64 copy of N values).

The graph's intermediates stay allocated (one memory pool per device, shared by every graph of
this module): about as much as one eager call allocates at the largest ``N`` recorded. Graphs are
used from ``N <= 2^26`` only (beyond, the device time dominates and the memory is larger), for
at most 16 shapes (least recently used dropped), and never when the batch is ranked across
data-parallel ranks (collectives), inside another capture, or for a loss that changes the batch
(Parameterized AP with ``topk``, its ``sigmoid`` form). :func:`set_cuda_graphs` turns them off.
If recording fails, that shape runs eagerly from then on, with one warning.

The same code without recording runs on the CPU when tests ask for it (:func:`force_static_shapes`),
so the padded, static-shape path is tested against the float64 references everywhere.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ranking.engine import working_dtype
from . import _ranking

__all__ = ["set_cuda_graphs", "cuda_graphs_enabled", "capacity", "force_static_shapes", "clear"]

_ENABLED = True
_MAX_POINTS = 1 << 26
_MIN_CAPACITY = 64
_MAX_CAPACITY = 1 << 14
_MAX_GRAPHS = 16
_FORCED = False  # tests: run the static-shape path (without recording) on any device


def set_cuda_graphs(enabled: bool) -> None:
    """Replay the ranking losses' work as CUDA graphs (default) or run it eagerly.

    Graphs remove the host's cost of issuing each operator (the bound at N = 1e6-1e7 logits) at the
    price of memory kept for each recorded shape (see :mod:`detlosses.losses._graphs`). Values and
    gradients are the same either way, up to the order of floating-point additions. Turning them
    off also frees the recorded graphs.
    """
    global _ENABLED
    _ENABLED = bool(enabled)
    if not _ENABLED:
        clear()


def cuda_graphs_enabled() -> bool:
    """Whether the ranking losses replay CUDA graphs where they can (:func:`set_cuda_graphs`)."""
    return _ENABLED


def capacity(count: int) -> int:
    """Positive slots of the static-shape batch for ``count`` positives: a power of two >= 64."""
    return max(_MIN_CAPACITY, 1 << (count - 1).bit_length())


@contextlib.contextmanager
def force_static_shapes() -> Iterator[None]:
    """Run the static-shape path on every device (no recording off CUDA): for tests."""
    global _FORCED
    before, _FORCED = _FORCED, True
    try:
        yield
    finally:
        _FORCED = before


@dataclass
class _Inputs:
    """What a graph reads: the scores and the negatives' mask (shared by the graphs of one ``N``),
    the positives' positions, their number, the extra per-positive input and, for a formula that
    reads them (``formula.uses_positive_targets``), the positives' targets."""

    scores: Tensor  # (N,) working dtype
    negatives: Tensor  # (N,) bool
    index: Tensor  # (capacity,) int64
    count: Tensor  # () float64
    extra: Tensor | None  # (capacity,) float64
    positive_targets: Tensor | None  # (capacity,) the targets' dtype
    #: per number of positives, the views of the per-positive buffers it fills (made once: no
    #: slicing operator per call)
    views: dict[int, tuple[Tensor, Tensor | None, Tensor | None]] = field(default_factory=dict)

    def filled(self, count: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The first ``count`` slots of the positions, the extra input and the positives' targets."""
        views = self.views.get(count)
        if views is None:
            views = self.views[count] = tuple(None if t is None else t.narrow(0, 0, count)
                                              for t in (self.index, self.extra, self.positive_targets))
        return views


Formula = Callable[["_ranking.RankingBatch"], "_ranking.RankingGradients"]


def _static_batch(inputs: _Inputs, context, kernels) -> _ranking.RankingBatch:
    """The static-shape batch over ``inputs`` (every operator here is recorded in the graph)."""
    slots = inputs.index.shape[0]
    valid = torch.arange(slots, device=inputs.index.device) < inputs.count
    index = torch.where(valid, inputs.index, inputs.index[:1])  # padding: the first positive again
    extra = None if inputs.extra is None else torch.where(valid, inputs.extra, 0.0)
    batch = _ranking.RankingBatch(inputs.scores, None, index, inputs.negatives, context, [slots], kernels,
                                  valid=valid, count=inputs.count, extra=extra)
    if inputs.positive_targets is not None:
        batch.positive_targets = torch.where(valid, inputs.positive_targets, inputs.positive_targets[:1])
    return batch


class _Recorded:
    """One shape's work: recorded as a CUDA graph (or, off CUDA, run as it is: tests)."""

    def __init__(self, inputs: _Inputs, work: Callable[[_Inputs], tuple]) -> None:
        self.inputs, self.work = inputs, work
        self.graph: torch.cuda.CUDAGraph | None = None
        self._views: dict[int, tuple] = {}  # per number of positives: the outputs, extra gradients cut
        device = inputs.scores.device
        if device.type != "cuda":
            return
        # warm up on a side stream (lazily made tables, library workspaces), then record on it. On
        # the tensors' device, which need not be the current one: ``torch.cuda.graph`` would record
        # on its default stream, made once on whichever device was current at the first recording,
        # while the kernels ran on the tensors' device outside the capture (an empty graph,
        # replayed without effect: stale gradients)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            work(inputs)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device), torch.cuda.graph(graph, pool=_pool(device), stream=stream,
                                                         capture_error_mode="thread_local"):
            self.outputs = work(inputs)
        self.graph = graph

    def __call__(self, count: int) -> tuple:
        """``(values, gradients, extra gradients (count,), padded positions)``, copies of the
        graph's outputs."""
        if self.graph is None:
            return _cut(self.work(self.inputs), count)
        self._replay()
        outputs = self._views.get(count)
        if outputs is None:
            outputs = self._views[count] = _cut(self.outputs, count)
        return _copy(outputs)

    def _replay(self) -> None:
        self.graph.replay()


def _cut(outputs: tuple, count: int) -> tuple:
    values, gradients, extra, index = outputs
    return values, gradients, [None if g is None else g.narrow(0, 0, count) for g in extra], index


def _copy(tree):
    if isinstance(tree, Tensor):
        return tree.clone()
    if isinstance(tree, (list, tuple)):
        return type(tree)(_copy(t) for t in tree)
    return tree


_POOLS: dict[torch.device, object] = {}
_GRAPHS: OrderedDict[tuple, _Recorded | None] = OrderedDict()  # None: recording failed
_BUFFERS: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()


def _pool(device: torch.device):
    if device not in _POOLS:
        _POOLS[device] = torch.cuda.graph_pool_handle()
    return _POOLS[device]


def clear() -> None:
    """Drop every recorded graph and its buffers."""
    _GRAPHS.clear()
    _BUFFERS.clear()
    _POOLS.clear()


def _eligible(batch: _ranking.RankingBatch) -> bool:
    device = batch.logits.device
    if not batch.graphable or batch.context.active:
        return False
    if _FORCED:
        return True
    return (_ENABLED and device.type == "cuda" and batch.logits.numel() <= _MAX_POINTS
            and capacity(int(batch.positive_index.numel())) <= _MAX_CAPACITY
            and not torch.cuda.is_current_stream_capturing())


def _shared_buffers(batch: _ranking.RankingBatch, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    key = (batch.logits.device, batch.logits.numel(), dtype)
    if key in _BUFFERS:
        _BUFFERS.move_to_end(key)
    else:
        _BUFFERS[key] = (torch.empty_like(batch.logits, dtype=dtype), torch.empty_like(batch.negative_mask))
        while len(_BUFFERS) > 4:
            _BUFFERS.popitem(last=False)
    return _BUFFERS[key]


def run(batch: _ranking.RankingBatch, formula: Formula, extra: Tensor | None):
    """:func:`._ranking.ranked` of ``batch`` through a graph of its static shape, or ``None`` where
    none applies (the caller runs it eagerly).

    Returns ``(values, gradients, extra gradients (P_local,), padded positive index)`` (the index is
    ``None`` when no gradient is left at the positives).
    """
    if not _eligible(batch):
        return None
    count = int(batch.positive_index.numel())
    slots = capacity(count)
    extra_dtype = None if extra is None else extra.dtype
    dtype = working_dtype(batch.logits.dtype)  # (batch.scores would convert the logits: the copy below does)
    key = (formula, batch.kernels, batch.logits.device, batch.logits.numel(), slots, dtype,
           batch.targets.dtype, extra_dtype)
    recorded = _GRAPHS.get(key, False)
    if recorded is None and not _FORCED:  # recording this shape failed before
        return None
    if recorded:
        _GRAPHS.move_to_end(key)
        inputs = recorded.inputs
    else:
        device = batch.logits.device
        scores, negatives = _shared_buffers(batch, dtype)
        inputs = _Inputs(scores, negatives, torch.zeros(slots, dtype=torch.int64, device=device),
                         torch.zeros((), dtype=torch.float64, device=device),
                         None if extra is None else torch.zeros(slots, dtype=torch.float64, device=device),
                         batch.targets.new_zeros(slots) if getattr(formula, "uses_positive_targets", False)
                         else None)
    inputs.scores.copy_(batch.logits)  # (converting half-precision logits in the same pass)
    inputs.negatives.copy_(batch.negative_mask)
    index, extra_slots, targets = inputs.filled(count)
    index.copy_(batch.positive_index)
    inputs.count.fill_(count)
    if extra is not None:
        extra_slots.copy_(extra)
    if targets is not None:
        targets.copy_(batch.positive_targets)

    context, kernels = batch.context, batch.kernels  # (the graph must not keep this batch alive)

    def work(static: _Inputs) -> tuple:
        with torch.no_grad():
            static_batch = _static_batch(static, context, kernels)
            values, gradients, extra_grads = _ranking.ranked(static_batch, formula, extra_dtype)
            # the (padded) positions only where a gradient is left at the positives (backward adds it)
            sparse = any(part is not None for _, part in gradients)
            return values, gradients, extra_grads, static_batch.positive_index if sparse else None

    if not recorded:
        try:
            recorded = _Recorded(inputs, work)
        except RuntimeError as error:  # an operator that cannot be recorded: this shape runs eagerly
            _GRAPHS[key] = None
            warnings.warn(f"detlosses: recording a CUDA graph of the ranking loss failed ({error}); "
                          "this shape runs without one", RuntimeWarning, stacklevel=4)
            return None
        _GRAPHS[key] = recorded
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    return recorded(count)
