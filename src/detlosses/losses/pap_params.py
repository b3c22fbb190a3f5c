"""Parameters of Parameterized AP Loss (Tao et al., "Parameterized AP Loss", 2021).

The loss is built from five monotone piecewise-linear maps of ``[0, 1]`` onto ``[0, 1]``, in the
order of the released code: ``H2, I2, I3, I1, H1`` (with only four, ``H1`` is the exact step). Each
goes through 6 control points ``(0,0), 4 free points, (1,1)`` stored flat as
``x0, y0, x1, y1, ..., x5, y5`` (12 numbers). The search samples each function as 8 numbers
``theta in [0, 1]`` mapped cumulatively per coordinate, ``p_k = p_{k-1} + theta_k (1 - p_{k-1})``
(:func:`control_points_from_theta`); :data:`IDENTITY_THETA` gives the identity.

Presets: the released searched sets (RetinaNet R50, and the Faster R-CNN RPN and R-CNN heads,
``configs/paploss/*.py`` of fundamentalvision/Parameterized-AP-Loss) and the hand-crafted
baselines ``linear``, ``sigmoid`` and ``square`` of the paper.

A params file (JSON) stores a searched set for ``detlosses train --loss pap --pap-params FILE``::

    {"format": "detlosses-pap-params/1", "functions": {"H2": [...12], "I2": ..., "I3": ...,
     "I1": ..., "H1": ...}, "reg_weight": 4.1231, "metadata": {...}}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._atomic import atomic_write_json

__all__ = [
    "FUNCTION_ORDER",
    "IDENTITY_THETA",
    "PAPParams",
    "PRESETS",
    "control_points_from_theta",
    "validate_control_points",
    "resolve_params",
    "load_pap_params",
    "save_pap_params",
    "load_two_stage_pap_params",
    "save_two_stage_pap_params",
]

FUNCTION_ORDER = ("H2", "I2", "I3", "I1", "H1")
IDENTITY_THETA = (0.2, 0.2, 0.25, 0.25, 0.3333, 0.3333, 0.5, 0.5)
PARAMS_FORMAT = "detlosses-pap-params/1"
TWO_STAGE_FORMAT = "detlosses-pap-params-two-stage/1"

_RETINANET = (
    (0, 0, 0.4182, 0.0277, 0.4948, 0.2187, 0.6882, 0.2624, 0.802, 0.6688, 1, 1),  # H2
    (0, 0, 0.1279, 0.3696, 0.3056, 0.4708, 0.5198, 0.529, 0.6983, 0.6709, 1, 1),  # I2
    (0, 0, 0.0931, 0.0289, 0.3607, 0.5585, 0.4823, 0.7131, 0.6291, 0.8162, 1, 1),  # I3
    (0, 0, 0.4914, 0.1499, 0.5492, 0.1664, 0.6259, 0.3051, 0.7945, 0.6195, 1, 1),  # I1
    (0, 0, 0.413, 0.0798, 0.4356, 0.3571, 0.5361, 0.7063, 0.8097, 0.9083, 1, 1),  # H1
)
_FASTER_RCNN_RPN = (
    (0, 0, 0.9058, 0.0484, 0.9068, 0.5120, 0.9232, 0.7286, 0.9766, 0.9677, 1, 1),
    (0, 0, 0.3200, 0.1084, 0.3493, 0.2482, 0.4924, 0.3869, 0.7231, 0.6510, 1, 1),
    (0, 0, 0.0935, 0.0419, 0.2177, 0.1168, 0.5857, 0.3748, 0.7962, 0.6683, 1, 1),
    (0, 0, 0.0045, 0.3599, 0.1295, 0.4603, 0.7662, 0.5140, 0.8483, 0.5259, 1, 1),
    (0, 0, 0.1764, 0.1081, 0.5245, 0.4907, 0.6956, 0.5668, 0.7642, 0.8645, 1, 1),
)
_FASTER_RCNN_RCNN = (
    (0, 0, 0.3344, 0.0268, 0.5460, 0.2461, 0.8196, 0.6466, 0.9467, 0.8617, 1, 1),
    (0, 0, 0.0978, 0.2019, 0.4073, 0.3367, 0.6337, 0.4689, 0.7708, 0.6633, 1, 1),
    (0, 0, 0.2406, 0.0515, 0.3358, 0.5259, 0.6047, 0.6647, 0.8575, 0.7792, 1, 1),
    (0, 0, 0.2574, 0.2363, 0.5442, 0.5999, 0.7165, 0.6548, 0.8728, 0.8331, 1, 1),
    (0, 0, 0.1551, 0.2675, 0.4902, 0.3957, 0.7245, 0.5095, 0.8068, 0.8720, 1, 1),
)


@dataclass(frozen=True)
class PAPParams:
    """A resolved loss form.

    Attributes:
        form: ``"searched"`` (piecewise-linear control points), ``"linear"``, ``"sigmoid"`` or
            ``"square"``.
        control_points: ``(5, 12)`` or ``(4, 12)`` float64 tensor for ``"searched"``, else ``None``.
        reg_weight: box-branch gradient scale that goes with the set (1 for hand-crafted forms).
        metadata: free-form provenance (search id, reward, ...).
    """

    form: str
    control_points: Tensor | None = None
    reg_weight: float = 1.0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def function(self, name: str) -> tuple[list[float], list[float]] | None:
        """``(xs, ys)`` of one of ``H2, I2, I3, I1, H1`` (``None`` for ``H1`` of a 4-function set)."""
        if self.control_points is None:
            raise ValueError(f"the {self.form!r} form has no control points")
        index = FUNCTION_ORDER.index(name)
        if index >= self.control_points.shape[0]:
            return None
        row = self.control_points[index].tolist()
        return row[0::2], row[1::2]


PRESETS: dict[str, PAPParams] = {
    "retinanet": PAPParams("searched", torch.tensor(_RETINANET, dtype=torch.float64), 4.1231,
                           {"source": "released RetinaNet R50 search"}),
    "faster_rcnn_rpn": PAPParams("searched", torch.tensor(_FASTER_RCNN_RPN, dtype=torch.float64), 1.6950,
                                 {"source": "released Faster R-CNN search, RPN head"}),
    "faster_rcnn_rcnn": PAPParams("searched", torch.tensor(_FASTER_RCNN_RCNN, dtype=torch.float64), 7.1324,
                                  {"source": "released Faster R-CNN search, R-CNN head"}),
    "linear": PAPParams("linear"),
    "sigmoid": PAPParams("sigmoid"),
    "square": PAPParams("square"),
}


def control_points_from_theta(theta: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """Map search variables ``(F, 8)`` in ``[0, 1]`` to control points ``(F, 12)``.

    Per function and coordinate: ``p_0 = 0``, ``p_k = p_{k-1} + theta_k (1 - p_{k-1})`` for the 4
    free points, ``p_5 = 1``; so both coordinates are non-decreasing.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if theta.dim() != 2 or theta.shape[1] != 8:
        raise ValueError(f"theta must have shape (functions, 8), got {tuple(theta.shape)}")
    if not bool(torch.isfinite(theta).all()) or float(theta.min()) < 0.0 or float(theta.max()) > 1.0:
        raise ValueError("theta values must lie in [0, 1]")
    pairs = theta.reshape(theta.shape[0], 4, 2)
    points = torch.zeros(theta.shape[0], 6, 2, dtype=torch.float64)
    points[:, 5] = 1.0
    previous = torch.zeros(theta.shape[0], 2, dtype=torch.float64)
    for k in range(4):  # four free points: a fixed, tiny loop
        previous = previous + pairs[:, k] * (1.0 - previous)
        points[:, k + 1] = previous
    return points.reshape(theta.shape[0], 12)


def validate_control_points(points: object, name: str = "params") -> Tensor:
    """Check a ``(5, 12)`` / ``(4, 12)`` control-point set; returns it as float64 (CPU)."""
    try:
        tensor = torch.as_tensor(points, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{name} must be a preset name or a (5, 12) / (4, 12) tensor of control points: {err}"
        ) from None
    if tensor.dim() != 2 or tensor.shape[0] not in (4, 5) or tensor.shape[1] != 12:
        raise ValueError(
            f"{name} must have shape (5, 12) or (4, 12) (functions H2, I2, I3, I1[, H1] x 6 control "
            f"points), got {tuple(tensor.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    for index, row in enumerate(tensor):
        label = f"{name}[{index}] ({FUNCTION_ORDER[index]})"
        xs, ys = row[0::2], row[1::2]
        for coord, values in (("x", xs), ("y", ys)):
            if float(values[0]) != 0.0 or float(values[-1]) != 1.0:
                raise ValueError(f"{label}: {coord} must start at 0 and end at 1, got {values.tolist()}")
            if bool((values[1:] < values[:-1]).any()):
                raise ValueError(f"{label}: {coord} must be non-decreasing, got {values.tolist()}")
    return tensor


def resolve_params(params: str | Tensor | Sequence | PAPParams) -> PAPParams:
    """A preset name, a control-point tensor or a :class:`PAPParams` → :class:`PAPParams`."""
    if isinstance(params, PAPParams):
        if params.form == "searched":
            validate_control_points(params.control_points)
        elif params.form not in ("linear", "sigmoid", "square"):
            raise ValueError(f"unknown Parameterized AP Loss form {params.form!r}")
        return params
    if isinstance(params, str):
        key = params.lower().replace("-", "_")
        if key not in PRESETS:
            raise ValueError(
                f"unknown params preset {params!r}; choose one of {sorted(PRESETS)} or pass control points"
            )
        return PRESETS[key]
    return PAPParams("searched", validate_control_points(params), 1.0)


def _payload(params: PAPParams) -> dict[str, Any]:
    """The JSON mapping of one searched set (the body of a params file)."""
    if params.form != "searched" or params.control_points is None:
        raise ValueError("only searched (control-point) parameters can be saved to a params file")
    points = validate_control_points(params.control_points)
    if not math.isfinite(params.reg_weight) or params.reg_weight <= 0:
        raise ValueError(f"reg_weight must be a finite number > 0, got {params.reg_weight}")
    return {
        "format": PARAMS_FORMAT,
        "functions": {
            name: [round(v, 6) for v in row.tolist()] for name, row in zip(FUNCTION_ORDER, points, strict=False)
        },
        "reg_weight": float(params.reg_weight),
        "metadata": dict(params.metadata),
    }


def save_pap_params(params: PAPParams, path: str | os.PathLike) -> Path:
    """Write a params file (atomically: a temporary file then ``os.replace``)."""
    return atomic_write_json(_payload(params), path)


def save_two_stage_pap_params(stages: Mapping[str, PAPParams], path: str | os.PathLike) -> Path:
    """Write a two-stage params file (Faster R-CNN: ``{"rpn": ..., "rcnn": ...}``), atomically."""
    payload = {"format": TWO_STAGE_FORMAT, "stages": {name: _payload(params) for name, params in stages.items()}}
    return atomic_write_json(payload, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"params file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"params file {path} is not readable JSON: {err}") from None


def load_two_stage_pap_params(path: str | os.PathLike) -> dict[str, PAPParams]:
    """Read a two-stage params file: ``{"rpn": PAPParams, "rcnn": PAPParams}``."""
    path = Path(path)
    payload = _read_json(path)
    if isinstance(payload, dict) and payload.get("format") == PARAMS_FORMAT:
        raise ValueError(f"params file {path} holds one set of parameters (a one-stage detector's); faster_rcnn "
                         f"needs a {TWO_STAGE_FORMAT} file with an 'rpn' and an 'rcnn' set (detlosses search "
                         "--model faster_rcnn writes one)")
    if not isinstance(payload, dict) or payload.get("format") != TWO_STAGE_FORMAT:
        raise ValueError(f"params file {path} is not a {TWO_STAGE_FORMAT} file (missing or wrong 'format')")
    stages = payload.get("stages")
    if not isinstance(stages, dict) or set(stages) != {"rpn", "rcnn"}:
        raise ValueError(f"params file {path} must hold the stages 'rpn' and 'rcnn'")
    return {name: _from_payload(stages[name], f"{path} ({name})") for name in ("rpn", "rcnn")}


def load_pap_params(path: str | os.PathLike) -> PAPParams:
    """Read a params file written by :func:`save_pap_params` (or ``detlosses search``)."""
    path = Path(path)
    return _from_payload(_read_json(path), str(path))


def _from_payload(payload: Any, path: str) -> PAPParams:
    if not isinstance(payload, dict) or payload.get("format") != PARAMS_FORMAT:
        raise ValueError(f"params file {path} is not a {PARAMS_FORMAT} file (missing or wrong 'format')")
    functions = payload.get("functions")
    if not isinstance(functions, dict) or not all(name in functions for name in FUNCTION_ORDER[:4]):
        raise ValueError(f"params file {path} must list the functions {FUNCTION_ORDER[:4]} (and optionally H1)")
    names = FUNCTION_ORDER if "H1" in functions else FUNCTION_ORDER[:4]
    points = validate_control_points([functions[name] for name in names], name=f"params file {path}")
    try:
        reg_weight = float(payload.get("reg_weight", 1.0))
    except (TypeError, ValueError):
        raise ValueError(f"params file {path}: reg_weight must be a number") from None
    if not math.isfinite(reg_weight) or reg_weight <= 0:
        raise ValueError(f"params file {path}: reg_weight must be a finite number > 0, got {reg_weight}")
    return PAPParams("searched", points, reg_weight, dict(payload.get("metadata") or {}))
