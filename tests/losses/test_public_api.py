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


def positional_names(fn, count):
    params = [p for name, p in inspect.signature(fn).parameters.items() if name != "self"]
    return tuple(p.name for p in params[:count])


def test_one_naming_convention():
    """Classification losses take ``logits, targets`` first, box-regression losses ``pred, target``
    (box deltas), element weights are ``weight`` (README, "One API shape"); GHM included."""
    for fn in (detlosses.ap_loss, detlosses.alrp_loss, detlosses.rank_sort_loss, detlosses.parameterized_ap_loss,
               detlosses.ghmc_loss, detlosses.iou_balanced_focal_loss, detlosses.GHMC.forward,
               detlosses.IoUBalancedFocalLoss.forward, detlosses.APLoss.forward, detlosses.ALRPLoss.forward,
               detlosses.RankSortLoss.forward, detlosses.ParameterizedAPLoss.forward):
        assert positional_names(fn, 2) == ("logits", "targets"), fn
    for fn in (detlosses.ghmr_loss, detlosses.iou_balanced_smooth_l1_loss, detlosses.GHMR.forward,
               detlosses.IoUBalancedSmoothL1Loss.forward):
        assert positional_names(fn, 2) == ("pred", "target"), fn
    for fn in (detlosses.ghmc_loss, detlosses.ghmr_loss, detlosses.iou_balanced_focal_loss,
               detlosses.iou_balanced_smooth_l1_loss, detlosses.GHMC.forward, detlosses.GHMR.forward,
               detlosses.IoUBalancedFocalLoss.forward, detlosses.IoUBalancedSmoothL1Loss.forward):
        assert "weight" in inspect.signature(fn).parameters, fn
    for cls in (detlosses.GHMC, detlosses.GHMR, detlosses.IoUBalancedFocalLoss, detlosses.IoUBalancedSmoothL1Loss):
        assert "reduction_override" in inspect.signature(cls.forward).parameters, cls
    import torch

    logits, targets = torch.randn(6, 2), (torch.rand(6, 2) < 0.3).float()
    weight = torch.ones(6, 2)
    # the new names as keywords, and positionally: the same value
    torch.testing.assert_close(detlosses.GHMC(momentum=0.0)(logits=logits, targets=targets, weight=weight),
                               detlosses.GHMC(momentum=0.0)(logits, targets, weight))
    torch.testing.assert_close(detlosses.ghmc_loss(logits=logits, targets=targets, weight=weight),
                               detlosses.ghmc_loss(logits, targets, weight))


def test_every_loss_module_takes_distributed_opt_in():
    """``distributed=`` is a constructor argument of every loss module, ``False`` by default, and reaches
    the functional form (README: "pass ``distributed=True``")."""
    for cls in (detlosses.APLoss, detlosses.ALRPLoss, detlosses.RankSortLoss, detlosses.ParameterizedAPLoss,
                detlosses.GHMC, detlosses.GHMR, detlosses.IoUBalancedFocalLoss, detlosses.IoUBalancedSmoothL1Loss):
        assert inspect.signature(cls).parameters["distributed"].default is False, cls
        assert cls().distributed is False and cls(distributed=True).distributed is True, cls


def test_iou_balanced_modules_default_mean_and_pass_distributed(monkeypatch):
    import torch

    from detlosses.losses import iou_balanced

    focal, sl1 = detlosses.IoUBalancedFocalLoss(), detlosses.IoUBalancedSmoothL1Loss()
    assert focal.reduction == "mean" and sl1.reduction == "mean"
    seen = []
    real = iou_balanced.resolve_context

    def spy(distributed):
        seen.append(distributed)
        return real(False)  # one process here: the same sums

    monkeypatch.setattr(iou_balanced, "resolve_context", spy)
    logits, targets = torch.randn(5, 3), torch.zeros(5, 3)
    targets[0, 1] = targets[3, 2] = 1
    ious = torch.rand(5)
    deltas, goal = torch.randn(4, 4), torch.randn(4, 4)
    box_ious = torch.rand(4)
    for distributed in (False, True):
        seen.clear()
        out_f = detlosses.IoUBalancedFocalLoss(distributed=distributed)(logits, targets, ious)
        out_r = detlosses.IoUBalancedSmoothL1Loss(distributed=distributed)(deltas, goal, box_ious)
        assert seen == [distributed, distributed]
        torch.testing.assert_close(out_f, detlosses.iou_balanced_focal_loss(logits, targets, ious))
        torch.testing.assert_close(out_r, detlosses.iou_balanced_smooth_l1_loss(deltas, goal, box_ious))


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
