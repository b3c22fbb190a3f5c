"""Loss choices of the detector pipeline, by name.

Each criterion turns a :class:`~detlosses.models.assignment.DenseAssignment` (the whole batch:
every image, anchor, FPN level and class) into ``{"loss": total, <components>...}``. Components
are returned separately so that they are logged separately.

======================  ===================================================================
name                    classification + localisation
======================  ===================================================================
``focal``               sigmoid focal loss + L1 on deltas (RetinaNet) or GIoU (FCOS), as torchvision
``ap``                  AP-Loss + smooth-L1 on deltas (RetinaNet) or GIoU (FCOS) (Chen et al., 2019)
``alrp``                aLRP Loss, ``e = 1 - GIoU``, self-balance updated at each epoch end
``rank_sort``           Rank & Sort Loss with IoU targets + score-weighted GIoU, self-balance
                        ``lambda = (L_rank + L_sort) / L_box`` every iteration (Oksuz et al., 2021)
``pap``                 Parameterized AP Loss; boxes trained only through the soft IoU,
                        box gradient scaled by ``reg_weight`` (Tao et al., 2021)
``ghm``                 GHM-C + GHM-R (Li et al., 2019)
``iou_balanced``        IoU-balanced focal + IoU-balanced smooth-L1 (Wu et al., 2019)
======================  ===================================================================

All normalisations use the number of positives of the whole batch — under data parallelism, of
every rank's batch (so every component, and Rank & Sort's self-balance weight, is the union's):
the criteria opt every loss into data-parallel ranking (``distributed=True``, see
:mod:`detlosses.distributed`), which is a single process when ``torch.distributed`` is not
initialised.

Every value stays on the device: normalisers, the box loss and the self-balance weights are
tensors (``clamp(min=1)``, ``torch.where``), never ``float(...)``/``.item()`` of a device tensor;
:meth:`DetectionCriterion.extra_logs` returns tensors, which the training module hands to
Lightning's ``self.log`` (read on the host at the logging interval only). Beyond what the losses
themselves need, a criterion call costs one host sync: the enumeration of the positives
(:attr:`~detlosses.models.assignment.DenseAssignment.positive_index`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ..distributed import resolve_context, union_sum
from ..losses import (
    GHMC,
    GHMR,
    ALRPLoss,
    PAPParams,
    ParameterizedAPLoss,
    ap_loss,
    deferred_checks,
    iou_balanced_focal_loss,
    iou_balanced_smooth_l1_loss,
    load_pap_params,
    rank_sort_loss,
)
from ..losses._statistics import Float64Statistics
from .assignment import DenseAssignment

__all__ = ["DetectionCriterion", "CRITERIA", "build_criterion", "LOSS_NAMES"]


class DetectionCriterion(Float64Statistics):
    """Base class: ``forward(batch) -> {"loss": ..., components}``; epoch-level hooks.

    A call reads the value checks of all its losses in one host read, when it ends
    (:func:`detlosses.losses.deferred_checks`): GHM-C + GHM-R or the two IoU-balanced losses would
    otherwise make the host wait for the device twice per step.
    """

    name = "base"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with deferred_checks():
            return super().__call__(*args, **kwargs)

    def epoch_end(self) -> dict[str, float]:
        """Called once at the end of every training epoch; returns values to log."""
        return {}

    def gradient_norm_histogram(self) -> tuple[list[float], list[float]] | None:
        """``(bin edges, counts)`` of the finished epoch's gradient norms, for criteria that keep
        one (GHM); ``None`` otherwise."""
        return None

    def extra_logs(self) -> dict[str, Tensor | float]:
        """Values to log with every training step (e.g. a self-balance weight).

        Tensors stay on the device (no host read per step); Lightning reads them when it logs.
        """
        return {}


def _l1_delta_loss(batch: DenseAssignment) -> Tensor:
    """RetinaNet's box loss: L1 between the positives' deltas and their targets, summed over the
    positives' coordinates, divided by the number of positives (focal's, and GHM's ``box_loss="delta"``)."""
    return _positive_mean(F.l1_loss(batch.positive_deltas, batch.positive_target_deltas(), reduction="sum"), batch)


def _positive_mean(local_sum: Tensor, batch: DenseAssignment) -> Tensor:
    """A sum over the positives of the whole batch divided by their number (at least 1).

    Under data parallelism both are the union's (the sum's gradient is scaled for DDP's averaging),
    so every rank normalises by the global number of positives. The count stays on the device.
    """
    context = resolve_context(True)
    count = context.all_reduce_sum(batch.positive_count(torch.float64)).clamp(min=1)
    total = union_sum(local_sum, context)
    compute = torch.promote_types(total.dtype, torch.float32)
    return (total.to(compute) / count.to(device=total.device, dtype=compute)).to(total.dtype)


def _ternary_targets(batch: DenseAssignment) -> Tensor:
    """The ranking losses' ``(B, A, C)`` targets, 1 / 0 / -1, as ``int8``: a quarter of float32's
    bytes to write, compare and check, and integers need no check for fractions."""
    return batch.class_targets(torch.int8)


def _check_box_loss(box_loss: str) -> str:
    if box_loss not in ("auto", "delta", "giou"):
        raise ValueError(f"box_loss must be 'auto', 'delta' or 'giou', got {box_loss!r}")
    return box_loss


def _delta_box_loss(box_loss: str, batch: DenseAssignment) -> bool:
    """Whether to regress deltas: ``"auto"`` does for anchor heads (RetinaNet), not for FCOS (GIoU)."""
    if box_loss == "auto":
        return batch.head == "retinanet"
    return box_loss == "delta"


class FocalCriterion(DetectionCriterion):
    """Sigmoid focal loss over valid anchors + L1 on deltas (``box_loss="delta"``, the RetinaNet
    default of ``"auto"``) or GIoU (``"giou"``, the FCOS default)."""

    name = "focal"

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, box_loss: str = "auto") -> None:
        super().__init__()
        self.alpha, self.gamma, self.box_loss = float(alpha), float(gamma), _check_box_loss(box_loss)

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        # every element, ignored anchors masked out (boolean indexing would sync, forward and backward)
        valid = batch.valid_mask.unsqueeze(-1)
        targets = batch.class_targets(batch.cls_logits.dtype, ignored=0.0)  # (the ignored: masked below)
        per_element = sigmoid_focal_loss(batch.cls_logits, targets, alpha=self.alpha, gamma=self.gamma,
                                         reduction="none")
        cls = _positive_mean(torch.where(valid, per_element, 0.0).sum(), batch)
        if _delta_box_loss(self.box_loss, batch):
            box = _l1_delta_loss(batch)
        else:
            box = _positive_mean(batch.positive_giou_loss().sum(), batch)
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}


class APCriterion(DetectionCriterion):
    """AP-Loss (whole batch ranked at once) + smooth-L1 on the positives' deltas."""

    name = "ap"

    def __init__(
        self, delta: float = 1.0, interpolate: bool = True, box_beta: float = 1.0 / 9.0, box_loss: str = "auto"
    ) -> None:
        super().__init__()
        self.delta, self.interpolate, self.box_beta = float(delta), bool(interpolate), float(box_beta)
        self.box_loss = _check_box_loss(box_loss)

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        cls = ap_loss(batch.cls_logits, _ternary_targets(batch), delta=self.delta, interpolate=self.interpolate,
                      distributed=True)
        if _delta_box_loss(self.box_loss, batch):
            box = _positive_mean(F.smooth_l1_loss(
                batch.positive_deltas, batch.positive_target_deltas(), beta=self.box_beta, reduction="sum"
            ), batch)
        else:
            box = _positive_mean(batch.positive_giou_loss().sum(), batch)
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}


class ALRPCriterion(DetectionCriterion):
    """aLRP Loss with ``e = 1 - GIoU`` and its epoch-level self-balance weight."""

    name = "alrp"

    def __init__(self, delta: float = 1.0, initial_weight: float = 50.0) -> None:
        super().__init__()
        self.alrp = ALRPLoss(delta=delta, initial_weight=initial_weight, distributed=True)

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        errors = batch.positive_giou_loss()
        loss = self.alrp(batch.cls_logits, _ternary_targets(batch), errors)
        cls, loc = self.alrp.last_components
        return {"loss": loss, "loss_cls": cls, "loss_loc": loc}

    def epoch_end(self) -> dict[str, float]:
        return {"sb_weight": self.alrp.end_epoch()}

    def extra_logs(self) -> dict[str, Tensor]:
        # the buffer itself (ALRPLoss.weight would read it on the host every step)
        return {"sb_weight": self.alrp.self_balance.weight.detach()}


class RankSortCriterion(DetectionCriterion):
    """Rank & Sort Loss (IoU targets) + GIoU weighted by the positives' max score, self-balanced."""

    name = "rank_sort"

    def __init__(self, delta: float = 0.5) -> None:
        super().__init__()
        self.delta = float(delta)
        self.last_weight: Tensor | None = None  # the last step's self-balance weight (on the device)

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        pred_boxes = batch.positive_pred_boxes()
        ious = batch.positive_ious(pred_boxes)
        dtype = torch.promote_types(batch.cls_logits.dtype, torch.float32)
        targets = batch.class_targets(dtype, positive_values=ious)  # the IoU at a positive's class
        ranking, sorting = rank_sort_loss(batch.cls_logits, targets, delta=self.delta, distributed=True)
        giou = batch.positive_giou_loss(pred_boxes)
        context = resolve_context(True)
        with torch.no_grad():
            scores = batch.cls_logits.detach().reshape(-1, batch.num_classes)[batch.positive_index]
            weights = torch.sigmoid(scores.to(dtype)).max(dim=1).values.to(giou.dtype)
            total_weight = context.all_reduce_sum(weights.sum().to(torch.float64))
            total_weight = torch.where(total_weight > 1e-10, total_weight, 1.0).to(giou.dtype)
        # over the positives of every rank; so the self-balance weight below is the same on every rank
        box = union_sum((weights * giou).sum(), context) / total_weight
        with torch.no_grad():  # lambda = (L_rank + L_sort) / L_box (0 when L_box is not positive), in float64
            box_value = box.detach().to(torch.float64)
            ranking_value = (ranking + sorting).detach().to(device=box_value.device, dtype=torch.float64)
            balance = torch.where(box_value > 0, ranking_value / box_value, 0.0)
        self.last_weight = balance
        box = box * balance.to(box.dtype)
        return {"loss": ranking + sorting + box, "loss_rank": ranking, "loss_sort": sorting, "loss_box": box}

    def extra_logs(self) -> dict[str, Tensor]:
        return {} if self.last_weight is None else {"sb_weight": self.last_weight}


class PAPCriterion(DetectionCriterion):
    """Parameterized AP Loss: boxes trained only through the soft IoU ``(GIoU + 1) / 2``."""

    name = "pap"

    def __init__(
        self,
        params: str | PAPParams | Tensor = "retinanet",
        reg_weight: float | None = None,
        topk: int | None = None,
        params_file: str | None = None,
    ) -> None:
        super().__init__()
        if params_file is not None:
            params = load_pap_params(params_file)
        self.pap = ParameterizedAPLoss(params, topk=topk, reg_weight=reg_weight, distributed=True)

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        giou_loss = batch.positive_giou_loss()
        soft_iou = (1.0 - 0.5 * giou_loss).clamp(0.0, 1.0)  # (GIoU + 1) / 2
        # one per positive, in the order of the class targets' positives (positive_index ascends,
        # one class each): no (B, A, C) tensor of soft IoUs, nor its gradient
        loss = self.pap(batch.cls_logits, _ternary_targets(batch), soft_iou)
        return {"loss": loss, "loss_pap": loss}

    def extra_logs(self) -> dict[str, float]:
        return {"reg_weight": self.pap.reg_weight}  # a host float: no device read


class GHMCriterion(DetectionCriterion):
    """GHM-C over all valid (anchor, class) elements + GHM-R on the positives' deltas.

    ``box_loss="ghmr"`` (default) is the paper's GHM-C + GHM-R; ``box_loss="delta"`` keeps GHM-C and
    regresses the deltas with focal's L1 (sum over the positives' deltas / number of positives), the
    controlled variant that separates GHM-C's effect from GHM-R's.

    Also accumulates the epoch's histogram of GHM-C gradient norms (for the run report).
    """

    float64_statistics = ("histogram",)  # the epoch's gradient-norm counts: float64 under casts

    name = "ghm"
    histogram: Tensor

    def __init__(
        self,
        bins: int = 30,
        momentum: float = 0.75,
        reg_mu: float = 0.02,
        reg_bins: int = 10,
        reg_momentum: float = 0.7,
        reg_loss_weight: float = 10.0,
        bias_correction: bool = True,
        box_loss: str = "ghmr",
    ) -> None:
        super().__init__()
        if box_loss not in ("ghmr", "delta"):
            raise ValueError(f"box_loss must be 'ghmr' (GHM-R, the paper's) or 'delta' (L1 on deltas), "
                             f"got {box_loss!r}")
        self.box_loss = box_loss
        self.ghmc = GHMC(bins=bins, momentum=momentum, bias_correction=bias_correction, distributed=True)
        self.ghmr = GHMR(mu=reg_mu, bins=reg_bins, momentum=reg_momentum, loss_weight=reg_loss_weight,
                         bias_correction=bias_correction, distributed=True)
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64), persistent=False)
        self.last_histogram: list[float] | None = None

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        logits = batch.cls_logits.reshape(-1, batch.num_classes)
        # binary targets (0 on the ignored anchors' classes) and one weight per anchor (0: ignored),
        # which GHM-C broadcasts over the classes
        targets = batch.class_targets(ignored=0.0).reshape(-1, batch.num_classes)
        cls = self.ghmc(logits, targets, batch.valid_weight(logits.dtype))
        if self.box_loss == "delta":
            box = _l1_delta_loss(batch)
        else:
            deltas = batch.positive_deltas
            box = self.ghmr(deltas, batch.positive_target_deltas().to(deltas.dtype), torch.ones_like(deltas))
        if self.training:  # the counts GHM-C weighted by (this process's), added on the device
            self.histogram += self.ghmc.last_counts.to(self.histogram.dtype)
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}

    def histogram_edges(self) -> list[float]:
        return [i / self.ghmc.bins for i in range(self.ghmc.bins + 1)]

    def gradient_norm_histogram(self) -> tuple[list[float], list[float]] | None:
        return None if self.last_histogram is None else (self.histogram_edges(), self.last_histogram)

    def epoch_end(self) -> dict[str, float]:
        """Keeps the finished epoch's gradient-norm histogram in :attr:`last_histogram`."""
        self.last_histogram = [float(v) for v in self.histogram]
        self.histogram.zero_()
        return {}


class IoUBalancedCriterion(DetectionCriterion):
    """IoU-balanced focal loss + IoU-balanced smooth-L1 (IoU of the decoded boxes, detached)."""

    name = "iou_balanced"

    def __init__(self, eta: float = 1.5, lam: float = 1.5, beta: float = 0.11, alpha: float = 0.25,
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.eta, self.lam, self.beta, self.alpha, self.gamma = map(float, (eta, lam, beta, alpha, gamma))

    def forward(self, batch: DenseAssignment) -> dict[str, Tensor]:
        ious = batch.positive_ious()
        per_anchor = torch.zeros(batch.labels.shape, dtype=batch.cls_logits.dtype, device=ious.device)
        per_anchor.view(-1)[batch.positive_index] = ious.to(per_anchor.dtype)
        # the anchors' labels as targets (class index, -1 background, -2 ignored): no (B, A, C)
        # targets to build, and the positives are looked up among the anchors, not the elements
        cls = _positive_mean(iou_balanced_focal_loss(
            batch.cls_logits, batch.labels, per_anchor,
            eta=self.eta, alpha=self.alpha, gamma=self.gamma, reduction="sum", distributed=True,
        ), batch)
        deltas = batch.positive_deltas
        box = _positive_mean(iou_balanced_smooth_l1_loss(
            deltas, batch.positive_target_deltas().to(deltas.dtype), ious.to(deltas.dtype).clamp(0, 1),
            lam=self.lam, beta=self.beta, reduction="sum", distributed=True,
        ), batch)
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}


CRITERIA: dict[str, type[DetectionCriterion]] = {
    cls.name: cls
    for cls in (FocalCriterion, APCriterion, ALRPCriterion, RankSortCriterion, PAPCriterion, GHMCriterion,
                IoUBalancedCriterion)
}
LOSS_NAMES = tuple(CRITERIA)


def build_criterion(name: str, **options: Any) -> DetectionCriterion:
    """A criterion by name (see the module table); ``options`` go to its constructor."""
    if name not in CRITERIA:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    try:
        return CRITERIA[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for loss {name!r}: {err}") from None
