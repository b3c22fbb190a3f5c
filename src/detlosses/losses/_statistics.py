"""Running statistics that stay float64 when their module is cast to another dtype.

``module.half()``, ``module.to(torch.bfloat16)`` and Lightning's ``precision="16-true"`` /
``"bf16-true"`` cast every floating buffer. A running sum or count does not survive that: in
bfloat16 ``256 + 1 == 256`` (aLRP Loss's iteration count stuck at 256, its self-balance weight
silently wrong), and float16 overflows at 65,504 (GHM's bin counts at realistic sizes: weight 0 for
the fullest bin). As torchmetrics does for metric states, the buffers a module names in
``float64_statistics`` move with the module but keep their dtype and their exact values.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["Float64Statistics"]


class Float64Statistics(nn.Module):
    """Base of a module whose buffers named in :attr:`float64_statistics` are never rounded by a
    cast of the module (they still follow its device moves)."""

    float64_statistics: tuple[str, ...] = ()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True):
        before = {name: self._buffers[name] for name in self.float64_statistics}
        super()._apply(fn, recurse)
        for name, original in before.items():
            moved = self._buffers[name]
            if original is not None and moved is not None and moved.dtype != original.dtype:
                self._buffers[name] = original.to(moved.device)  # from the unrounded values
        return self
