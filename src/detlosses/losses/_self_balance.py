"""Epoch-level self-balance weight of aLRP Loss (Oksuz et al., NeurIPS 2020, Sec. 4.2).

``L = L_cls + w L_loc`` with ``w`` re-estimated at the end of every epoch as
``(mean L_loc + mean L_cls) / mean L_loc`` over that epoch's iterations. The running sums and the
weight are buffers (saved in ``state_dict``, moved with the module, float64 whatever it is cast to).
With ``distributed=True`` (:mod:`detlosses.distributed`) the sums are all-reduced before the update,
so every rank holds the same weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..distributed import resolve_context
from ._statistics import Float64Statistics

__all__ = ["SelfBalance"]


class SelfBalance(Float64Statistics):
    weight: Tensor
    sums: Tensor
    float64_statistics = ("weight", "sums")  # kept float64 under module casts (bf16: 256 + 1 = 256)

    def __init__(self, initial_weight: float = 50.0, distributed: bool = False) -> None:
        super().__init__()
        self.distributed = distributed
        initial_weight = float(initial_weight)
        if not initial_weight > 0.0:
            raise ValueError(f"the initial self-balance weight must be > 0, got {initial_weight}")
        self.register_buffer("weight", torch.tensor(initial_weight, dtype=torch.float64))
        # (sum of L_cls, sum of L_loc, number of iterations) of the current epoch
        self.register_buffer("sums", torch.zeros(3, dtype=torch.float64))

    @property
    def current(self) -> float:
        return float(self.weight)

    @torch.no_grad()
    def record(self, classification: Tensor, localisation: Tensor) -> None:
        update = torch.stack(
            [
                classification.detach().to(self.sums.device, torch.float64).reshape(()),
                localisation.detach().to(self.sums.device, torch.float64).reshape(()),
                torch.ones((), dtype=torch.float64, device=self.sums.device),
            ]
        )
        self.sums += update

    @torch.no_grad()
    def end_epoch(self) -> float:
        sums = resolve_context(self.distributed).all_reduce_sum(self.sums.clone())
        sum_cls, sum_loc, count = sums.tolist()
        self.sums.zero_()
        if count > 0 and sum_loc > 0.0:
            self.weight.fill_((sum_loc + sum_cls) / sum_loc)
        return self.current
