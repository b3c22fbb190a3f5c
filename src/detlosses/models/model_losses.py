"""Which losses each detector takes, and the criterion of a (model, loss) pair.

==================  ================================================================================
model               losses
==================  ================================================================================
``retinanet``       focal (default), ap, alrp, rank_sort, pap, ghm, iou_balanced
``fcos``            focal (default), ap, alrp, rank_sort, pap, ghm, iou_balanced
``faster_rcnn``     ce (default: torchvision's own RPN and Fast R-CNN losses), and in **both** stages
                    (RPN objectness and per-class sigmoid R-CNN head): ap, alrp, rank_sort, pap,
                    focal, ghm, iou_balanced (see :mod:`detlosses.models.faster_rcnn`)
``ssd``             ce (default: torchvision's SSD loss, softmax CE with 3:1 hard-negative mining +
                    smooth-L1), and with a sigmoid head: ap (AP-Loss paper: every anchor x class,
                    prior 0.01, smooth-L1 boxes), focal, alrp, rank_sort, pap, ghm, iou_balanced
``deformable_detr`` set (default: the model's own Hungarian set loss with auxiliary losses), and on the
                    matched queries of every decoder layer: pap, ap, alrp, rank_sort (see
                    :mod:`detlosses.models.set_criteria`)
==================  ================================================================================

Models this table does not list take the one-stage losses (:data:`~detlosses.models.criteria.LOSS_NAMES`).
"""

from __future__ import annotations

from typing import Any

from .criteria import LOSS_NAMES, DetectionCriterion, build_criterion
from .set_criteria import SET_LOSS_NAMES, SET_MODELS, build_set_criterion

__all__ = ["CE", "MODEL_LOSSES", "ALL_LOSS_NAMES", "default_loss", "supported_losses", "build_model_criterion",
           "check_model_loss", "TorchvisionLoss"]

CE = "ce"
MODEL_LOSSES: dict[str, tuple[str, ...]] = {
    "retinanet": LOSS_NAMES,
    "fcos": LOSS_NAMES,
    "faster_rcnn": (CE, *LOSS_NAMES),
    "ssd": (CE, *LOSS_NAMES),
    **{model: SET_LOSS_NAMES for model in SET_MODELS},
}
ALL_LOSS_NAMES: tuple[str, ...] = (*LOSS_NAMES, CE, *(n for n in SET_LOSS_NAMES if n not in LOSS_NAMES))
_DEFAULT_LOSS = {"faster_rcnn": CE, "ssd": CE, **{model: "set" for model in SET_MODELS}}


def supported_losses(model: str) -> tuple[str, ...]:
    """The loss names ``model`` takes."""
    return MODEL_LOSSES.get(model, LOSS_NAMES)


def default_loss(model: str) -> str:
    """The loss a model trains with when none is named (``ce`` for the torchvision-loss models)."""
    return _DEFAULT_LOSS.get(model, "focal")


def check_model_loss(model: str, loss: str) -> None:
    """Raise ``ValueError`` naming the models a loss applies to when ``model`` does not take it."""
    allowed = supported_losses(model)
    if loss in allowed:
        return
    takers = [name for name, losses in MODEL_LOSSES.items() if loss in losses]
    if not takers:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(ALL_LOSS_NAMES)}")
    raise ValueError(f"loss {loss!r} does not apply to model {model!r} (it is for {', '.join(takers)}); "
                     f"{model} takes {', '.join(allowed)}")


class TorchvisionLoss(DetectionCriterion):
    """``ce``: the detector keeps torchvision's own losses (nothing of detlosses is called)."""

    name = CE

    def forward(self, batch):  # pragma: no cover - never called: the detector's own loss is used
        raise RuntimeError("the 'ce' criterion is torchvision's own loss; it is not called on a batch")


def build_model_criterion(model: str, loss: str, **options: Any) -> DetectionCriterion:
    """The criterion of ``loss`` for ``model`` (a two-stage criterion for Faster R-CNN)."""
    check_model_loss(model, loss)
    if loss == CE:
        if options:
            raise ValueError(f"loss 'ce' (torchvision's own loss of {model}) takes no loss_options, got "
                             f"{sorted(options)}")
        return TorchvisionLoss()
    if model in SET_MODELS:
        return build_set_criterion(loss, **options)
    if model == "faster_rcnn":
        from .faster_rcnn import TwoStageCriterion

        return TwoStageCriterion(loss, **options)
    if model == "ssd" and loss == "ap":
        options = {"box_beta": 1.0, **options}  # SSD's smooth-L1 (beta 1), unchanged by AP-Loss
    return build_criterion(loss, **options)
