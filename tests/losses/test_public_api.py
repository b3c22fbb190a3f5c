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
    assert (focal["eta"], focal["alpha"], focal["gamma"], focal["reduction"]) == (1.5, 0.25, 2.0, "sum")
    sl1 = keyword_defaults(detlosses.iou_balanced_smooth_l1_loss)
    assert (sl1["lam"], sl1["beta"], sl1["normalize"], sl1["reduction"]) == (1.5, 0.11, True, "sum")


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
