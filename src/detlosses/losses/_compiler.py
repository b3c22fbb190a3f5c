"""The ranking losses inside ``torch.compile``: they run eagerly, as one graph break each.

A ranking loss reads one number back from the device (its count of positives) and works on shapes
that depend on it from then on; its windows, tables and CUDA graphs are built around that read.
Traced by TorchDynamo, a call would be re-traced for every new count of positives (tens of seconds
of compilation per loss on a CPU), and torch 2.14's tracer fails on it outright: the second count
of positives at 32,768 logits or more raises ``InternalTorchDynamoError: RecursionError`` (in its
``struct`` polyfill, from the CPU's bucketing grid). :func:`runs_eagerly` marks a loss so that
compiled code calls it as it calls any opaque function: the code around it is compiled as usual,
the loss runs exactly as in eager mode (its CUDA graphs included), and ``fullgraph=True`` names the
loss as the break. The elementwise losses (GHM, IoU-balanced) stay traceable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["runs_eagerly"]

F = TypeVar("F", bound=Callable)

_REASON = ("a ranking loss reads its number of positives back and sizes its work by it; it runs eagerly "
           "(compile with fullgraph=False)")
# (``reason`` is not in every torch version's signature: without it the message names the function only)
_OPTIONS = {"reason": _REASON} if "reason" in inspect.signature(torch.compiler.disable).parameters else {}


def runs_eagerly(fn: F) -> F:
    """``fn``, never traced by ``torch.compile`` (nor anything it calls)."""
    return torch.compiler.disable(fn, recursive=True, **_OPTIONS)  # type: ignore[return-value]
