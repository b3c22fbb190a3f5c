"""The public names and signatures promised in the issue, and the import boundary of the loss layer."""

from __future__ import annotations

import inspect
import subprocess
import sys

import detlosses


def keyword_defaults(fn):
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_functional_signatures():
    assert keyword_defaults(detlosses.ap_loss) == {"delta": 1.0, "interpolate": True, "distributed": False}
    assert keyword_defaults(detlosses.alrp_loss)["delta"] == 1.0
    assert keyword_defaults(detlosses.rank_sort_loss)["delta"] == 0.5
    pap = keyword_defaults(detlosses.parameterized_ap_loss)
    assert pap["params"] == "retinanet" and pap["topk"] is None
    focal = keyword_defaults(detlosses.iou_balanced_focal_loss)
    assert (focal["eta"], focal["alpha"], focal["gamma"], focal["reduction"]) == (1.5, 0.25, 2.0, "mean")
    sl1 = keyword_defaults(detlosses.iou_balanced_smooth_l1_loss)
    assert (sl1["lam"], sl1["beta"], sl1["normalize"], sl1["reduction"]) == (1.5, 0.11, True, "mean")
    assert keyword_defaults(detlosses.ghmc_loss)["bins"] == 30 and keyword_defaults(detlosses.ghmr_loss)["mu"] == 0.02


def test_one_api_shape():
    """Functional forms return a tensor, or a NamedTuple of tensors for two-term losses; modules
    return one tensor (loss_weight times their total); helpers are not in the top-level namespace."""
    import torch

    logits = torch.randn(2, 50, 3, requires_grad=True)
    targets = torch.zeros(2, 50, 3, dtype=torch.long)
    targets[0, :3, 0] = 1
    ious = torch.rand(2, 50, 3)
    errors = torch.rand(3)
    rs_targets = targets * ious
    assert isinstance(detlosses.ap_loss(logits, targets), torch.Tensor)
    assert detlosses.alrp_loss(logits, targets, errors)._fields == ("classification", "localisation")
    assert detlosses.rank_sort_loss(logits, rs_targets)._fields == ("ranking", "sorting")
    assert isinstance(detlosses.parameterized_ap_loss(logits, targets, ious), torch.Tensor)
    flat, flat_t = logits.reshape(-1, 3), targets.reshape(-1, 3).float()
    for out in (detlosses.ghmc_loss(flat, flat_t), detlosses.ghmr_loss(flat, flat_t),
                detlosses.APLoss()(logits, targets), detlosses.ALRPLoss()(logits, targets, errors),
                detlosses.RankSortLoss()(logits, rs_targets), detlosses.ParameterizedAPLoss()(logits, targets, ious),
                detlosses.GHMC()(flat, flat_t), detlosses.GHMR()(flat, flat_t),
                detlosses.IoUBalancedFocalLoss()(logits, targets.float(), ious),
                detlosses.IoUBalancedSmoothL1Loss()(flat, flat_t, flat_t.clamp(0, 1))):
        assert isinstance(out, torch.Tensor) and out.dim() == 0
    for helper in ("scale_gradient", "weight_reduce_loss", "control_points_from_theta"):
        assert helper not in detlosses.__all__ and not hasattr(detlosses, helper)


def test_module_defaults():
    assert (detlosses.GHMC().bins, detlosses.GHMC().momentum) == (30, 0.75)
    ghmr = detlosses.GHMR()
    assert (ghmr.mu, ghmr.bins, ghmr.momentum) == (0.02, 10, 0.7)
    assert detlosses.ALRPLoss().weight == 50.0
    for cls in (detlosses.APLoss, detlosses.RankSortLoss, detlosses.ParameterizedAPLoss,
                detlosses.IoUBalancedFocalLoss, detlosses.IoUBalancedSmoothL1Loss):
        assert "loss_weight" in inspect.signature(cls).parameters


def test_loss_layer_imports_only_torch():
    code = (
        "import sys, detlosses, detlosses.losses, detlosses.ranking;"
        "bad = [m for m in ('lightning', 'optuna', 'matplotlib', 'typer', 'yaml', 'faster_coco_eval', 'scipy')"
        " if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
