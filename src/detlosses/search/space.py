"""The search space of Parameterized AP Loss: 8 variables per function plus the box-gradient scale.

For the RetinaNet search: 5 functions (``H2, I2, I3, I1, H1``) x 8 = 40 variables in ``[0, 1]`` that
map cumulatively to control points (:func:`~detlosses.losses.control_points_from_theta`), plus one
variable ``t`` for the box-branch gradient scale ``reg_weight = 10^(2 t - 1)`` (41 in all).

For Faster R-CNN (``stages=("rpn", "rcnn")``) both heads' sets are searched at once: the same 41
variables per stage, named ``rpn_*`` and ``rcnn_*`` (82 in all); :meth:`SearchSpace.to_stage_params`
decodes them into one :class:`PAPParams` per stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses.pap_params import FUNCTION_ORDER, IDENTITY_THETA, PAPParams, control_points_from_theta

__all__ = ["SearchSpace"]


@dataclass(frozen=True)
class SearchSpace:
    """Names, initial mean and decoding of the search variables."""

    functions: int = 5
    search_reg_weight: bool = True
    stages: tuple[str, ...] = ()  # () one set; ("rpn", "rcnn") one set per Faster R-CNN stage

    def __post_init__(self) -> None:
        if self.functions not in (4, 5):
            raise ValueError(f"the search covers 4 or 5 functions, got {self.functions}")

    @property
    def _stage_dimension(self) -> int:
        return 8 * self.functions + (1 if self.search_reg_weight else 0)

    @property
    def names(self) -> list[str]:
        names = [f"{FUNCTION_ORDER[f]}_{k}" for f in range(self.functions) for k in range(8)]
        names += ["reg_weight"] if self.search_reg_weight else []
        if self.stages:
            return [f"{stage}_{name}" for stage in self.stages for name in names]
        return names

    @property
    def dimension(self) -> int:
        return len(self.names)

    def initial_mean(self) -> Tensor:
        """The identity functions and ``t = 0.5`` (``reg_weight = 1``), as released."""
        mean = list(IDENTITY_THETA) * self.functions + ([0.5] if self.search_reg_weight else [])
        return torch.tensor(mean * max(1, len(self.stages)), dtype=torch.float64)

    def to_stage_params(self, theta: Tensor | list[float], metadata: dict | None = None) -> dict[str, PAPParams]:
        """One :class:`PAPParams` per stage (a search with ``stages``)."""
        theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
        if not self.stages:
            raise ValueError("this search space has no stages; use to_params")
        if theta.numel() != self.dimension:
            raise ValueError(f"expected {self.dimension} search variables, got {theta.numel()}")
        size = self._stage_dimension
        return {stage: self._decode(theta[i * size:(i + 1) * size], {**(metadata or {}), "stage": stage})
                for i, stage in enumerate(self.stages)}

    def to_params(self, theta: Tensor | list[float], metadata: dict | None = None) -> PAPParams:
        theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
        if self.stages:
            raise ValueError(f"a search over the stages {self.stages} has one set per stage; use to_stage_params")
        if theta.numel() != self.dimension:
            raise ValueError(f"expected {self.dimension} search variables, got {theta.numel()}")
        return self._decode(theta, metadata)

    def _decode(self, theta: Tensor, metadata: dict | None) -> PAPParams:
        points = control_points_from_theta(theta[: 8 * self.functions].reshape(self.functions, 8))
        reg_weight = float(10.0 ** (2.0 * float(theta[-1]) - 1.0)) if self.search_reg_weight else 1.0
        return PAPParams("searched", points, reg_weight, dict(metadata or {}))

    def vector(self, params: dict[str, float]) -> Tensor:
        """Optuna's parameter dict back to the ordered vector."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"trial parameters lack {missing[:3]}...")
        return torch.tensor([float(params[n]) for n in self.names], dtype=torch.float64)
