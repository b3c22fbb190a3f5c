"""Exact ranking across data-parallel ranks with O(P) communication — opt-in, one place.

Every loss of :mod:`detlosses` computes on the tensors it is given unless asked otherwise
(``distributed=False``, the default): calling it on some ranks only cannot hang, and its
gradients are exactly those of the local batch. With ``distributed=True`` the ranking losses
rank the **union** of all ranks' batches, and they stay exact:

* every rank gathers the positives' scores (and per-positive values such as IoU targets or
  localisation errors) of all ranks — ``O(P)`` numbers;
* sums over each rank's own negatives are computed locally against the global positives and
  all-reduced per positive — ``O(P)`` numbers;
* everything per positive is then identical on every rank, and each rank computes the gradients of
  its own logits locally. No rank ever sees another rank's negatives (no all-gather of ``N``).

DDP averages parameter gradients over the ``W`` ranks. A loss that every rank computes over the
union would therefore reach the parameters divided by ``W``; with ``scale_for_average=True`` (the
default) the gradients returned to the local inputs are multiplied by ``W`` so that, after DDP's
averaging, the parameters receive exactly the gradient of one process training on the union.
``distributed=True`` outside an initialised process group (or with one rank) is a single process.
The detector pipeline opts in whenever it trains with several processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistributedContext",
    "resolve_context",
    "union_sum",
    "shared_sum",
    "gather_with_grad",
    "attach_local",
]


@dataclass(frozen=True)
class DistributedContext:
    """Who takes part in one loss evaluation.

    Attributes:
        group: the process group (``None``: the default group).
        world_size: number of ranks (1: no communication at all).
        rank: this rank's index in ``group``.
        scale_for_average: multiply local gradients by ``world_size`` to undo DDP's averaging.
    """

    group: object = None
    world_size: int = 1
    rank: int = 0
    scale_for_average: bool = True

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def gradient_scale(self) -> float:
        return float(self.world_size) if self.active and self.scale_for_average else 1.0

    # ------------------------------------------------------------------ collectives
    def _device(self, tensor: Tensor) -> torch.device:
        backend = dist.get_backend(self.group)
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return tensor.device if backend != "gloo" or tensor.device.type == "cpu" else torch.device("cpu")

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over ranks (a new tensor; no autograd)."""
        if not self.active:
            return tensor
        work = tensor.detach().to(self._device(tensor)).clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM, group=self.group)
        return work.to(tensor.device)

    def gather_sizes(self, count: int, device: torch.device) -> list[int]:
        """Every rank's ``count`` (one host synchronisation)."""
        if not self.active:
            return [count]
        local = torch.tensor([count], dtype=torch.int64, device=self._device(torch.empty(0, device=device)))
        sizes = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(sizes, local, group=self.group)
        return torch.cat(sizes).tolist()

    def all_gather_variable(self, tensor: Tensor, sizes: list[int]) -> Tensor:
        """Concatenate every rank's ``tensor`` (first dimension ``sizes[r]``), rank order; no autograd
        (a single process: ``tensor`` itself)."""
        if not self.active:
            return tensor
        device = self._device(tensor)
        longest = max(sizes) if sizes else 0
        local = tensor.detach().to(device)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(tensor.device)

    def offset(self, sizes: list[int]) -> int:
        """Start of this rank's slice in a rank-ordered concatenation."""
        return sum(sizes[: self.rank])


def resolve_context(distributed: bool | DistributedContext = False, group: object = None,
                    scale_for_average: bool = True) -> DistributedContext:
    """The context of one call.

    ``False`` (default): this process's tensors alone. ``True``: the union of the ranks of
    ``group`` (a single process when ``torch.distributed`` is not initialised). A
    :class:`DistributedContext` (e.g. ``resolve_context(True, scale_for_average=False)``) is used as
    given.
    """
    if isinstance(distributed, DistributedContext):
        return distributed
    if distributed is None:
        raise ValueError("distributed must be True or False (data-parallel ranking is opt-in)")
    if not distributed or not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    world = dist.get_world_size(group)
    if world <= 1:
        return DistributedContext()
    return DistributedContext(group=group, world_size=world, rank=dist.get_rank(group),
                              scale_for_average=scale_for_average)


class _SharedSum(torch.autograd.Function):
    """Forward: sum over ranks of partial sums. Backward: every rank needs the gradient of the
    total w.r.t. its partial, which is the sum over ranks of the upstream gradients."""

    @staticmethod
    def forward(ctx, value: Tensor, context: DistributedContext) -> Tensor:  # type: ignore[override]
        ctx.context = context
        return context.all_reduce_sum(value)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.context.all_reduce_sum(grad.contiguous()), None


class _GatherWithGrad(torch.autograd.Function):
    """Forward: rank-ordered concatenation. Backward: sum the gradients of all ranks, keep ours."""

    @staticmethod
    def forward(ctx, value: Tensor, context: DistributedContext, sizes: list[int]) -> Tensor:  # type: ignore[override]
        ctx.context, ctx.start, ctx.count = context, context.offset(sizes), value.shape[0]
        return context.all_gather_variable(value, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        total = ctx.context.all_reduce_sum(grad.contiguous())
        return total[ctx.start: ctx.start + ctx.count], None, None


def union_sum(value: Tensor, context: DistributedContext) -> Tensor:
    """The union's value from this rank's additive term: every rank's term appears once in it, so
    this rank's term gets the upstream gradient (times the DDP scale)."""
    if not context.active:
        return value
    from .losses._grad_scale import scale_gradient

    scaled = scale_gradient(value, context.gradient_scale)
    return scaled + (context.all_reduce_sum(value) - value).detach()


def shared_sum(value: Tensor, context: DistributedContext) -> Tensor:
    """Sum of per-rank partial sums, differentiable (all-reduce forward and backward)."""
    if not context.active:
        return value
    return _SharedSum.apply(value, context)


def gather_with_grad(value: Tensor, context: DistributedContext, sizes: list[int]) -> Tensor:
    """All ranks' rows, rank-ordered; gradients of every rank flow back to the owner."""
    if not context.active:
        return value
    return _GatherWithGrad.apply(value, context, sizes)


def attach_local(global_values: Tensor, local_values: Tensor, start: int) -> Tensor:
    """``global_values`` (detached) with this rank's slice replaced by ``local_values`` (attached).

    For per-positive terms that every rank computes identically: gradients reach only the owner.
    """
    end = start + local_values.shape[0]
    return torch.cat([global_values[:start].detach(), local_values, global_values[end:].detach()])
