"""Run a loss outside autocast: its sums accumulate in float32/float64 whatever the AMP setting."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["full_precision"]

F = TypeVar("F", bound=Callable)


def full_precision(fn: F) -> F:
    """Disable autocast (on the devices of the tensor arguments) while ``fn`` runs.

    Under ``torch.autocast`` float32 matrix products run in float16/bfloat16; the losses cast
    their inputs up themselves and must keep their reductions in float32 or better.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        devices = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)}
        with contextlib.ExitStack() as stack:
            for device in devices:
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device_type=device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
